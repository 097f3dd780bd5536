//! A check that the crate's layers point down: no top-level module imports another that, directly
//! or through others, imports it back. It reads the sources (every `crate::<module>` path) rather
//! than trusting the layering paragraph in lib.rs, so a new import that closes a circle fails
//! the suite. `cargo test --lib layers` prints the graph it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the other top-level modules its files name as `crate::<module>`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        let mut text = String::new();
        read_rust(&path, &mut text);
        let uses = graph.entry(name.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let target: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !target.is_empty() && target != name {
                uses.insert(target);
            }
        }
    }
    graph
}

/// Appends every `.rs` file under `path` to `out`.
fn read_rust(path: &Path, out: &mut String) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("a readable dir") {
            read_rust(&entry.expect("a directory entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&std::fs::read_to_string(path).expect("a readable source file"));
    }
}

/// A circle through `from`, if there is one: the path of modules back to it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty path");
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
    }
    None
}

#[test]
fn no_two_modules_import_each_other_directly_or_through_others() {
    let graph = module_graph(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")));
    assert!(graph.len() > 10, "expected the crate's modules, found {graph:?}");
    for (module, uses) in &graph {
        println!("{module} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(" "));
    }
    for module in graph.keys() {
        if let Some(path) = circle(&graph, module) {
            panic!("modules import each other: {}", path.join(" -> "));
        }
    }
}

#[test]
fn the_check_finds_a_circle_through_others() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(circle(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(circle(&graph, "d"), None, "d reaches a circle but is not on it");
}
