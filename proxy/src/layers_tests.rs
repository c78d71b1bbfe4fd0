//! The import rule of docs/ARCHITECTURE.md, checked: a module of `proxy/src` names
//! (`crate::x`, outside comments and tests) only modules of its own layer or of a layer below,
//! and the modules' imports form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, from the bottom up (docs/ARCHITECTURE.md, "The layers").
const LAYERS: &[&[&str]] = &[
    &["workers", "route", "gate", "buffers", "threads", "ctl", "tls", "metrics", "cancel"],
    &["backend", "pool", "conn"],
    &["replication"],
    &["cluster"],
    &["session", "fleet"],
    &["pg", "mysql", "monitor"],
    &["change", "repoint", "upgrade"],
    &["switchover", "failover", "control"],
    &["admin", "server"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every top-level module of `src` and the modules its code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
            let module = top.trim_end_matches(".rs").to_owned();
            if matches!(module.as_str(), "lib" | "main") || module.ends_with("_tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let named = graph.entry(module.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != module && name.chars().next().is_some_and(char::is_lowercase) {
                        named.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (module, named) in &graph {
        let Some(own) = layer(module) else {
            wrong.push(format!("{module} has no layer in LAYERS (and docs/ARCHITECTURE.md)"));
            continue;
        };
        for other in named {
            match layer(other) {
                Some(l) if l <= own => {}
                Some(_) => wrong.push(format!("{module} (layer {own}) imports {other}, a layer above it")),
                None => wrong.push(format!("{module} imports {other}, which has no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_imports_form_no_cycle() {
    let graph = imports();
    // Kahn's algorithm: whatever cannot be removed is on a cycle.
    let mut left: BTreeMap<&str, BTreeSet<&str>> = graph
        .iter()
        .map(|(m, named)| (m.as_str(), named.iter().map(String::as_str).filter(|n| graph.contains_key(*n)).collect()))
        .collect();
    loop {
        let free: Vec<&str> = left.iter().filter(|(_, named)| named.is_empty()).map(|(m, _)| *m).collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            left.remove(m);
            for named in left.values_mut() {
                named.remove(m);
            }
        }
    }
    assert!(left.is_empty(), "modules on an import cycle: {:?}", left.keys().collect::<Vec<_>>());
}
