//! The audit log verifier on hostile files. A genuine log of 24 records in three rotated
//! files is written once with the real writer; each input is a list of edits (overwrite a
//! byte, delete, duplicate or swap lines, truncate, drop a file, append junk) applied to
//! it. Properties: `verify` never panics; with the true head known, every edit that
//! changes the log is reported; an unchanged log verifies.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use kms_sidecar::audit::{AuditConfig, AuditEvent, AuditHead, AuditKey, AuditLog, Phase, VerifyOptions, verify};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x42; 32];

struct Genuine {
    files: Vec<Vec<Vec<u8>>>,
    head: AuditHead,
}

fn genuine() -> &'static Genuine {
    static G: OnceLock<Genuine> = OnceLock::new();
    G.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log =
            AuditLog::open(AuditConfig { path: path.clone(), max_bytes: 3000, fsync: false }, AuditKey::from_bytes(KEY))
                .expect("open");
        let mut head = AuditHead { seq: 0, mac: [0; 32] };
        for i in 0..24u32 {
            let id = format!("req-{i}");
            head = log
                .append(&AuditEvent {
                    time: SystemTime::UNIX_EPOCH,
                    request_id: &id,
                    principal: "token:fuzz",
                    peer: "unix:uid=1",
                    operation: "Encrypt",
                    key: Some("tenant-a/db"),
                    key_version: Some(i),
                    phase: if i % 5 == 0 { Phase::Attempt } else { Phase::Result },
                    code: "OK",
                    latency_us: Some(u64::from(i)),
                    detail: None,
                })
                .expect("append");
        }
        drop(log);
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("e").path()).collect();
        names.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "audit.log"), p.clone()));
        let files = names
            .iter()
            .map(|p| {
                let text = std::fs::read(p).expect("read");
                text.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
            })
            .collect();
        Genuine { files, head }
    })
}

fuzz_target!(|data: &[u8]| {
    let g = genuine();
    let mut files = g.files.clone();
    for op in data.chunks(4) {
        let [kind, a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0), *op.get(3).unwrap_or(&0)];
        if files.is_empty() {
            break;
        }
        let f = usize::from(a) % files.len();
        let lines = &mut files[f];
        let n = lines.len();
        match kind % 7 {
            0 if n > 0 => {
                let line = &mut lines[usize::from(b) % n];
                if !line.is_empty() {
                    let at = usize::from(c) % line.len();
                    line[at] ^= 1 << (b % 8);
                }
            }
            1 if n > 0 => {
                lines.remove(usize::from(b) % n);
            }
            2 if n > 0 => {
                let l = lines[usize::from(b) % n].clone();
                lines.insert(usize::from(c) % (n + 1), l);
            }
            3 if n > 1 => lines.swap(usize::from(b) % n, usize::from(c) % n),
            4 if n > 0 => {
                let line = &mut lines[n - 1];
                let keep = usize::from(b) % line.len().max(1);
                line.truncate(keep);
            }
            5 => {
                files.remove(f);
            }
            6 => lines.push(op[1..].to_vec()),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, lines)| {
            let p = dir.path().join(format!("part{i}"));
            std::fs::write(&p, lines.concat()).expect("write");
            p
        })
        .collect();
    let options = VerifyOptions { partial: false, expected_head: Some(g.head) };
    let report = verify(&paths, &AuditKey::from_bytes(KEY), &options).expect("verify reads its files");
    // Empty files carry no records; the log is unchanged when the non-empty contents are.
    let nonempty = |fs: &[Vec<Vec<u8>>]| fs.iter().filter(|l| !l.concat().is_empty()).map(|l| l.concat()).collect::<Vec<_>>();
    let unchanged = nonempty(&files) == nonempty(&g.files);
    if unchanged {
        assert!(report.problem.is_none(), "the genuine log was refused: {:?}", report.problem);
    } else {
        assert!(report.problem.is_some(), "an edited log verified: {} records", report.records);
    }
});
