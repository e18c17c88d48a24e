//! `include/cryptocore.h` is what cbindgen makes of `src/lib.rs` today: the test command
//! regenerates it and fails when the committed header differs.
//! `CRYPTOCORE_UPDATE_HEADER=1 cargo test -p cryptocore-ffi --test header` rewrites it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_header_is_current() {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = format!("{crate_dir}/include/cryptocore.h");
    if std::env::var("CRYPTOCORE_UPDATE_HEADER").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is stale: run CRYPTOCORE_UPDATE_HEADER=1 cargo test -p cryptocore-ffi --test header and commit it"
    );
}
