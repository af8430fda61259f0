//! The engine's top-level modules form a tree of dependencies, not a web: no module reaches,
//! through `crate::…` paths, a module that reaches back to it. `node.rs` builds every part in
//! dependency order with only the handles each needs; a cycle here is how a service locator
//! (and late binding to close the circle at run time) creeps back in.
//!
//! The graph is read from the sources: an edge `a → b` for every `crate::b` (or `b` inside a
//! `use crate::{…}` list) in a non-test file of module `a`. Test code (`tests.rs` files and
//! inline `#[cfg(test)] mod …`) may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its inline test modules (everything from the first `#[cfg(test)]` that
/// opens a `mod` on): they sit at the end of a file, by the house style.
fn production_part(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]\n") {
        let at = from + i;
        let next = text[at..].lines().nth(1).unwrap_or("");
        let item = next
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        if item.starts_with("mod ") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// Identifiers that follow `crate::`, and those inside `use crate::{…}` lists.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // Top-level items of the list only: `{events::{A, B}, swarm}` → events, swarm.
            let mut depth = 0usize;
            let mut item = String::new();
            let mut in_name = true;
            for c in list.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        refs.insert(std::mem::take(&mut item));
                        in_name = true;
                    }
                    c if depth == 0 && in_name && (c.is_alphanumeric() || c == '_') => item.push(c),
                    c if depth == 0 && !c.is_whitespace() => in_name = item.is_empty(),
                    _ => {}
                }
            }
            refs.insert(item);
        } else {
            refs.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    refs
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(&src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (name != "lib" && name != "main").then(|| name.to_string())
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let deps = edges.entry(module.clone()).or_default();
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for r in crate_refs(production_part(&text)) {
            if r != module && modules.contains(&r) {
                deps.insert(r);
            }
        }
    }
    edges
}

/// A cycle through `start`, if any (depth-first).
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let here = path.last().cloned().unwrap_or_else(|| start.to_string());
    for next in edges.get(&here).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(c) = cycle_from(edges, start, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn engine_modules_have_no_dependency_cycle() {
    let edges = graph();
    assert!(
        edges.contains_key("node") && edges.contains_key("swarm"),
        "{edges:?}"
    );
    for module in edges.keys() {
        let mut path = vec![module.clone()];
        if let Some(cycle) = cycle_from(&edges, module, &mut path) {
            panic!(
                "module cycle in engine/src: {}\nthe whole graph: {edges:#?}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_reader_finds_edges() {
    let refs = crate_refs("use crate::events::{A, B};\nuse crate::{swarm, head::X};\n");
    assert_eq!(
        refs,
        ["events", "swarm", "head"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
