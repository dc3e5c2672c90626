//! Link settings for the `bundled` feature.
//!
//! pg_query (libpg_query, the statement check's PostgreSQL parser) and the bundled libpq
//! (pq-src) each carry their own copy of PostgreSQL's `src/port` and `src/common` helpers
//! (`pg_strcasecmp`, `pg_encoding_mblen`, ...), built from the same PostgreSQL major version.
//! Linked statically together they define those symbols twice; the linker is told to keep
//! one copy. The default build links the system's shared libpq and is not affected.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_BUNDLED").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--allow-multiple-definition");
    }
}
