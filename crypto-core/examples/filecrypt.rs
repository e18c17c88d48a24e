//! `filecrypt`: seal and open files with a local keyring (envelope format v1).
//!
//! ```text
//! filecrypt demo                                       # the whole flow in a temp dir
//! filecrypt init    --keyring K --key NAME             # create keyring file + key
//! filecrypt seal    --keyring K --key NAME [--context k=v]... [--segment-size N] IN OUT
//! filecrypt open    --keyring K [--context k=v]... IN OUT
//! filecrypt rotate  --keyring K --key NAME
//! filecrypt rewrap  --keyring K IN OUT
//! filecrypt inspect IN
//! filecrypt keys    --keyring K
//! ```
//!
//! Outputs are written (mode 0600) to a temporary file next to OUT and renamed into place only after
//! the operation succeeded and was flushed to disk, so a failed `open` (wrong context,
//! tampered or truncated input) never leaves a partial plaintext file behind.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crypto_core::envelope::{DEFAULT_SEGMENT_SIZE, EncryptionContext, Envelope, Form, SealOptions};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Default)]
struct Args {
    keyring: Option<PathBuf>,
    key: Option<String>,
    context: EncryptionContext,
    segment_size: u32,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args { segment_size: DEFAULT_SEGMENT_SIZE, ..Default::default() };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--keyring" => a.keyring = Some(PathBuf::from(value("--keyring")?)),
            "--key" => a.key = Some(value("--key")?),
            "--context" => {
                let kv = value("--context")?;
                let (k, v) = kv.split_once('=').ok_or("--context takes key=value")?;
                a.context.insert(k, v);
            }
            "--segment-size" => {
                a.segment_size = value("--segment-size")?.parse().map_err(|_| "--segment-size takes bytes")?
            }
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}").into()),
            _ => a.positional.push(arg.clone()),
        }
    }
    Ok(a)
}

fn keyring(a: &Args) -> Result<Arc<Keyring>> {
    let path = a.keyring.as_ref().ok_or("--keyring PATH is required")?;
    Ok(Arc::new(Keyring::open(path)?))
}

fn in_out(a: &Args) -> Result<(PathBuf, PathBuf)> {
    match a.positional.as_slice() {
        [i, o] => Ok((PathBuf::from(i), PathBuf::from(o))),
        _ => Err("expected IN OUT".into()),
    }
}

/// Runs `f` against a temporary file beside `out`; renames it into place only on success.
fn write_atomically(out: &Path, f: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let result = (|| {
        // 0600 from creation: the output may be plaintext.
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn envelope(a: &Args) -> Result<Envelope<LocalProvider>> {
    Ok(Envelope::new(LocalProvider::new(keyring(a)?))
        .with_options(SealOptions { segment_size: a.segment_size, ..Default::default() })?)
}

fn seal(a: &Args) -> Result<()> {
    let (input, output) = in_out(a)?;
    let key = a.key.as_deref().ok_or("--key NAME is required")?;
    let env = envelope(a)?;
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&input)?);
    write_atomically(&output, |w| {
        let mut sealer = env.encrypting_writer(w, key, &a.context)?;
        std::io::copy(&mut reader, &mut sealer)?;
        sealer.finish()?;
        Ok(())
    })
}

fn open(a: &Args) -> Result<()> {
    let (input, output) = in_out(a)?;
    let env = envelope(a)?;
    let mut reader = env.decrypting_reader(BufReader::with_capacity(1 << 20, File::open(&input)?), &a.context)?;
    write_atomically(&output, |w| {
        std::io::copy(&mut reader, w)?;
        Ok(())
    })
}

fn rewrap(a: &Args) -> Result<()> {
    let (input, output) = in_out(a)?;
    let env = envelope(a)?;
    let reader = BufReader::with_capacity(1 << 20, File::open(&input)?);
    write_atomically(&output, |w| {
        env.rewrap_stream(reader, w)?;
        Ok(())
    })
}

fn inspect(a: &Args) -> Result<()> {
    let [input] = a.positional.as_slice() else { return Err("expected IN".into()) };
    let mut head = Vec::new();
    File::open(input)?.take(70 * 1024).read_to_end(&mut head)?;
    let (header, len) = crypto_core::envelope::Header::parse(&head)?;
    println!("format      cryptocore envelope v1");
    match header.form() {
        Form::Stream { segment_size } => println!("form        stream, {segment_size}-byte segments"),
        Form::Compact => println!("form        compact"),
    }
    println!("header      {len} bytes");
    for w in header.wrapped_keys() {
        println!(
            "wrapped     provider={} key={} version={} blob={} bytes",
            w.provider_id,
            w.key_name,
            w.key_version,
            w.blob.len()
        );
    }
    Ok(())
}

fn demo() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("filecrypt-demo-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let ring_path = dir.join("keyring.json");
    let ring = Arc::new(Keyring::open(&ring_path)?);
    ring.create_key("tenant-a/files")?;
    let env = Envelope::new(LocalProvider::new(ring.clone()));
    let ctx = EncryptionContext::new().with("tenant", "a").with("path", "reports/q3.csv");
    println!("keyring     {} (mode 0600), key tenant-a/files v1", ring_path.display());

    let plain = dir.join("q3.csv");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(&plain, &data)?;
    let sealed = dir.join("q3.csv.cce");
    let t = Instant::now();
    write_atomically(&sealed, |w| {
        let mut s = env.encrypting_writer(w, "tenant-a/files", &ctx)?;
        s.write_all(&data)?;
        s.finish()?;
        Ok(())
    })?;
    println!("sealed      {} bytes -> {} bytes in {:?}", data.len(), fs::metadata(&sealed)?.len(), t.elapsed());

    let opened = dir.join("q3.opened.csv");
    let mut r = env.decrypting_reader(BufReader::new(File::open(&sealed)?), &ctx)?;
    write_atomically(&opened, |w| {
        std::io::copy(&mut r, w)?;
        Ok(())
    })?;
    assert_eq!(fs::read(&opened)?, data, "round trip");
    println!("opened      plaintext identical");

    let wrong = EncryptionContext::new().with("tenant", "b").with("path", "reports/q3.csv");
    match env.decrypting_reader(BufReader::new(File::open(&sealed)?), &wrong) {
        Err(e) => println!("wrong ctx   refused: {e}"),
        Ok(_) => return Err("wrong context was accepted".into()),
    }

    let v = ring.rotate("tenant-a/files")?;
    let rewrapped = dir.join("q3.csv.v2.cce");
    write_atomically(&rewrapped, |w| {
        env.rewrap_stream(BufReader::new(File::open(&sealed)?), w)?;
        Ok(())
    })?;
    println!("rotated     to v{v}; rewrapped header, body bytes unchanged");
    ring.set_min_decrypt_version("tenant-a/files", v)?;
    ring.destroy_version("tenant-a/files", 1)?;
    let old = env.decrypting_reader(BufReader::new(File::open(&sealed)?), &ctx);
    println!("shredded    v1 destroyed; old file: {}", old.err().map(|e| e.to_string()).unwrap_or_default());
    let mut out = Vec::new();
    env.decrypting_reader(BufReader::new(File::open(&rewrapped)?), &ctx)?.read_to_end(&mut out)?;
    assert_eq!(out, data);
    println!("rewrapped   file still opens under v{v}");
    fs::remove_dir_all(&dir)?;
    println!("demo ok");
    Ok(())
}

const USAGE: &str = "usage:
  filecrypt demo
  filecrypt init    --keyring K --key NAME
  filecrypt seal    --keyring K --key NAME [--context k=v]... [--segment-size N] IN OUT
  filecrypt open    --keyring K [--context k=v]... IN OUT
  filecrypt rotate  --keyring K --key NAME
  filecrypt rewrap  --keyring K IN OUT
  filecrypt inspect IN
  filecrypt keys    --keyring K";

fn run(args: &[String]) -> Result<()> {
    let (cmd, rest) = args.split_first().ok_or(USAGE)?;
    if matches!(cmd.as_str(), "--help" | "-h" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    let a = parse(rest)?;
    match cmd.as_str() {
        "demo" => demo(),
        "init" => {
            let ring = keyring(&a)?;
            let key = a.key.as_deref().ok_or("--key NAME is required")?;
            let info = ring.create_key(key)?;
            println!("created {} v{}", info.name, info.primary_version);
            Ok(())
        }
        "seal" => seal(&a),
        "open" => open(&a),
        "rotate" => {
            let key = a.key.as_deref().ok_or("--key NAME is required")?;
            println!("{key} now at v{}", keyring(&a)?.rotate(key)?);
            Ok(())
        }
        "rewrap" => rewrap(&a),
        "inspect" => inspect(&a),
        "keys" => {
            for k in keyring(&a)?.list() {
                println!(
                    "{} state={:?} primary=v{} min_decrypt=v{} versions={}",
                    k.name,
                    k.state,
                    k.primary_version,
                    k.min_decrypt_version,
                    k.versions.len()
                );
            }
            Ok(())
        }
        other => Err(format!("unknown command {other}").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filecrypt: {e}");
            ExitCode::FAILURE
        }
    }
}
