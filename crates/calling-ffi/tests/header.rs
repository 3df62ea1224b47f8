//! The committed header is the one cbindgen generates from the source: a
//! stale header fails here. `OPENCALLING_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn the_header_is_generated_from_the_source() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .unwrap_or_else(|error| panic!("{error}"));
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|error| panic!("{error}"));
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = crate_dir.join("include").join("opencalling.h");
    if std::env::var_os("OPENCALLING_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|error| panic!("{error}"));
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `OPENCALLING_BLESS=1 cargo test -p calling-ffi --test header`",
        path.display()
    );
}
