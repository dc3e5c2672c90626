//! The public API of the three library crates as snapshots (insta, in `src/snapshots/`): a
//! change to what an application can name or call (a signature, a public field, a variant, a
//! re-export) changes a snapshot, so it shows up in review instead of in a user's build. With
//! `CI=true` a changed surface fails the test; locally `INSTA_UPDATE=always cargo test -p
//! orchestrate --lib public_api` accepts it (then review the diff).
//!
//! Read from the sources with `syn` (stable Rust; rustdoc's JSON needs a nightly):
//! - `orchestrate-core` and `orchestrate-driver`: every `pub` item of every file, and every
//!   `pub` function of every `impl` (a superset of what is reachable: an item made public in
//!   a private module is listed too, which only errs on the side of showing a change);
//! - `orchestrate`: the library (`library.rs`), the crate root's re-exports, and the items
//!   they re-export from the internal modules (reports, outcomes); the internal modules are
//!   the binary's and are hidden from the documentation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::{Fields, ImplItem, Item, TraitItem, Visibility};

fn tokens(t: &impl ToTokens) -> String {
    t.to_token_stream().to_string()
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

fn cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && tokens(&a.meta).contains("test"))
}

fn fields(fields: &Fields, only_pub: bool) -> String {
    let list: Vec<String> = fields
        .iter()
        .filter(|f| !only_pub || is_pub(&f.vis))
        .map(|f| match &f.ident {
            Some(name) => format!("{name}: {}", tokens(&f.ty)),
            None => tokens(&f.ty),
        })
        .collect();
    match fields {
        Fields::Named(_) => format!(" {{ {} }}", list.join(", ")),
        Fields::Unnamed(_) => format!("({})", list.join(", ")),
        Fields::Unit => String::new(),
    }
}

/// The name an `impl` is for, to select the impls of named items.
fn impl_target(item: &syn::ItemImpl) -> String {
    match &*item.self_ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        other => tokens(other),
    }
}

/// The public types (structs, enums, traits) of `items`, inline modules included.
fn public_types(items: &[Item], found: &mut HashSet<String>) {
    for item in items {
        match item {
            Item::Struct(s) if is_pub(&s.vis) => {
                found.insert(s.ident.to_string());
            }
            Item::Enum(e) if is_pub(&e.vis) => {
                found.insert(e.ident.to_string());
            }
            Item::Trait(t) if is_pub(&t.vis) => {
                found.insert(t.ident.to_string());
            }
            Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    public_types(inner, found);
                }
            }
            _ => {}
        }
    }
}

/// One line per public item of `items`; `only` keeps the items (and their impls) of these
/// names. Impls are listed for the types in `types` (a private type's impls are not API).
fn surface(
    items: &[Item],
    prefix: &str,
    only: Option<&[&str]>,
    types: &HashSet<String>,
    out: &mut Vec<String>,
) {
    let wanted = |name: &str| only.is_none_or(|names| names.contains(&name));
    for item in items {
        match item {
            Item::Fn(f)
                if is_pub(&f.vis) && !cfg_test(&f.attrs) && wanted(&f.sig.ident.to_string()) =>
            {
                out.push(format!("{prefix}{}", tokens(&f.sig)));
            }
            Item::Struct(s) if is_pub(&s.vis) && wanted(&s.ident.to_string()) => out.push(format!(
                "{prefix}struct {}{}{}",
                s.ident,
                tokens(&s.generics),
                fields(&s.fields, true)
            )),
            Item::Enum(e) if is_pub(&e.vis) && wanted(&e.ident.to_string()) => {
                let variants: Vec<String> = e
                    .variants
                    .iter()
                    .map(|v| format!("{}{}", v.ident, fields(&v.fields, false)))
                    .collect();
                out.push(format!(
                    "{prefix}enum {}{} {{ {} }}",
                    e.ident,
                    tokens(&e.generics),
                    variants.join(", ")
                ));
            }
            Item::Trait(t) if is_pub(&t.vis) && wanted(&t.ident.to_string()) => {
                out.push(format!("{prefix}trait {}{}", t.ident, tokens(&t.generics)));
                for i in &t.items {
                    if let TraitItem::Fn(f) = i {
                        out.push(format!("{prefix}{}::{}", t.ident, tokens(&f.sig)));
                    }
                }
            }
            Item::Impl(i)
                if !cfg_test(&i.attrs)
                    && wanted(&impl_target(i))
                    && types.contains(&impl_target(i)) =>
            {
                let head = match &i.trait_ {
                    Some((_, path, _)) => format!(
                        "impl{} {} for {}",
                        tokens(&i.generics),
                        tokens(path),
                        tokens(&i.self_ty)
                    ),
                    None => format!("impl{} {}", tokens(&i.generics), tokens(&i.self_ty)),
                };
                let pub_fns: Vec<String> = i
                    .items
                    .iter()
                    .filter_map(|m| match m {
                        ImplItem::Fn(f) if is_pub(&f.vis) => Some(tokens(&f.sig)),
                        _ => None,
                    })
                    .collect();
                // A trait impl is public with its type; an inherent one through its pub fns.
                if i.trait_.is_some() {
                    out.push(format!("{prefix}{head}"));
                }
                for f in pub_fns {
                    out.push(format!("{prefix}{head}: {f}"));
                }
            }
            Item::Const(c) if is_pub(&c.vis) && wanted(&c.ident.to_string()) => {
                out.push(format!("{prefix}const {}: {}", c.ident, tokens(&c.ty)))
            }
            Item::Static(s) if is_pub(&s.vis) && wanted(&s.ident.to_string()) => {
                out.push(format!("{prefix}static {}: {}", s.ident, tokens(&s.ty)))
            }
            Item::Type(t) if is_pub(&t.vis) && wanted(&t.ident.to_string()) => out.push(format!(
                "{prefix}type {}{} = {}",
                t.ident,
                tokens(&t.generics),
                tokens(&t.ty)
            )),
            Item::Use(u) if is_pub(&u.vis) && only.is_none() => {
                out.push(format!("{prefix}use {}", tokens(&u.tree)))
            }
            Item::Mod(m) if !cfg_test(&m.attrs) => {
                if let Some((_, inner)) = &m.content {
                    if is_pub(&m.vis) {
                        surface(inner, &format!("{prefix}{}::", m.ident), only, types, out);
                    }
                } else if is_pub(&m.vis) && only.is_none() {
                    out.push(format!("{prefix}mod {}", m.ident));
                }
            }
            _ => {}
        }
    }
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, in name order.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every public item of every file of the crate whose sources are in `src`.
fn whole_crate(src: &Path) -> String {
    let files: Vec<(PathBuf, syn::File)> = sources(src)
        .into_iter()
        .map(|p| (p.clone(), parse(&p)))
        .collect();
    let mut types = HashSet::new();
    for (_, file) in &files {
        public_types(&file.items, &mut types);
    }
    let mut lines = Vec::new();
    for (path, file) in &files {
        let module = path
            .strip_prefix(src)
            .unwrap()
            .with_extension("")
            .to_string_lossy()
            .replace('/', "::");
        surface(
            &file.items,
            &format!("{module}: "),
            None,
            &types,
            &mut lines,
        );
    }
    lines.join("\n") + "\n"
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn orchestrate_core() {
    insta::assert_snapshot!(whole_crate(&manifest_dir().join("../core/src")));
}

#[test]
fn orchestrate_driver() {
    insta::assert_snapshot!(whole_crate(&manifest_dir().join("../driver/src")));
}

#[test]
fn orchestrate_library() {
    let src = manifest_dir().join("src");
    let mut lines = Vec::new();
    // The crate root's re-exports (its `pub mod`s are the binary's, hidden).
    for item in parse(&src.join("lib.rs")).items {
        if let Item::Use(u) = &item {
            if is_pub(&u.vis) {
                lines.push(format!("lib: use {}", tokens(&u.tree)));
            }
        }
    }
    let library = parse(&src.join("library.rs"));
    let mut types = HashSet::new();
    public_types(&library.items, &mut types);
    let reexported = [
        (
            "coordinator.rs",
            &["BatchError", "BatchReport", "BindOutcome", "Verdict"][..],
        ),
        ("inspect.rs", &["BindReport", "InDoubt"][..]),
        ("recover.rs", &["Action", "ActionKind", "RecoverReport"][..]),
    ];
    types.extend(
        reexported
            .iter()
            .flat_map(|(_, n)| n.iter().map(|n| n.to_string())),
    );
    surface(&library.items, "library: ", None, &types, &mut lines);
    // What the root re-exports from the internal modules.
    for (file, names) in reexported {
        let module = file.trim_end_matches(".rs");
        surface(
            &parse(&src.join(file)).items,
            &format!("{module}: "),
            Some(names),
            &types,
            &mut lines,
        );
    }
    insta::assert_snapshot!(lines.join("\n") + "\n");
}
