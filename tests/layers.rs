//! The module graph has no cycles and respects the layers of DESIGN.md §2.
//!
//! Reads every file under `src/`, maps it to its top-level module (`src/backend/set.rs` →
//! `backend`), and collects the top-level modules it names through `crate::` paths (plain,
//! grouped `use crate::{a, b::c}` and inline `crate::a::f()`), leaving out test code (from a
//! `#[cfg(test)]` line on, and `test_support` files). Then it looks for cycles between top-level
//! modules and for imports that point up the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to; `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Top-level modules named by `crate::` paths in `code`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first identifier of each item at depth 0
            let mut depth = 0usize;
            let mut at_item_start = true;
            let mut ident = String::new();
            for ch in group.chars() {
                if depth == 0 && at_item_start && (ch.is_alphanumeric() || ch == '_') {
                    ident.push(ch);
                    continue;
                }
                if !ident.is_empty() {
                    out.insert(std::mem::take(&mut ident));
                    at_item_start = false;
                }
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_item_start = true,
                    _ => {}
                }
            }
            if !ident.is_empty() {
                out.insert(ident);
            }
        } else {
            let ident: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
        rest = after;
    }
    out
}

/// The code of a file without its tests and without comments (doc links are no imports).
fn production_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .map(|l| l.split_once("//").map_or(l, |(before, _)| before))
        .collect::<Vec<_>>()
        .join("\n")
}

fn walk(dir: &Path, root: &Path, graph: &mut Graph) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, root, graph);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".rs") || name == "test_support.rs" || name == "tests.rs" {
            continue;
        }
        let Some(module) = module_of(path.strip_prefix(root).unwrap()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for dep in referenced(&production_code(&text)) {
            if dep != module {
                deps.insert(dep);
            }
        }
    }
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    walk(&root, &root, &mut graph);
    graph
}

/// One cycle through `graph`, if any (depth-first search with colours).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(dep, graph, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_parser_sees_every_form_of_crate_path() {
    let code = "use crate::a::B;\nuse crate::{c, d::E, f::{g, h}};\nlet x = crate::i::j();";
    let want: BTreeSet<String> = ["a", "c", "d", "f", "i"].map(String::from).into();
    assert_eq!(referenced(code), want);
    let cyclic: Graph = [("x", "y"), ("y", "z"), ("z", "x")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), [b.to_string()].into()))
        .collect();
    assert!(find_cycle(&cyclic).is_some());
}

#[test]
fn no_module_cycles() {
    let graph = graph();
    assert!(graph.contains_key("backend") && graph.contains_key("proxy"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}\ngraph: {graph:#?}", cycle.join(" -> "));
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = graph();
    // (module, modules it must never import)
    let rules: &[(&str, &[&str])] = &[
        (
            "backend",
            &[
                "balance", "health", "metrics", "admin", "upstream", "proxy", "server", "config",
                "settings", "client",
            ],
        ),
        (
            "breaker",
            &[
                "backend", "upstream", "proxy", "server", "admin", "settings",
            ],
        ),
        (
            "retry",
            &[
                "backend", "upstream", "proxy", "server", "admin", "settings",
            ],
        ),
        (
            "client",
            &[
                "backend", "upstream", "proxy", "server", "admin", "settings",
            ],
        ),
        (
            "balance",
            &[
                "health", "metrics", "upstream", "proxy", "server", "admin", "settings",
            ],
        ),
        (
            "health",
            &[
                "metrics", "upstream", "proxy", "server", "admin", "settings",
            ],
        ),
        (
            "metrics",
            &["upstream", "proxy", "server", "admin", "settings"],
        ),
        ("upstream", &["proxy", "server", "admin", "settings"]),
        ("proxy", &["server", "admin", "settings"]),
        ("admin", &["server", "proxy", "upstream", "settings"]),
        ("access_log", &["admin", "proxy", "server"]),
        (
            "config",
            &["server", "proxy", "admin", "upstream", "settings"],
        ),
        ("settings", &["server", "proxy", "admin", "reload"]),
        // reload sits between the pipeline and the wiring: the admin API may trigger it
        ("reload", &["server", "admin"]),
        // sessions: read by the pipeline, admin and metrics, never the other way round
        (
            "sticky",
            &[
                "backend", "upstream", "proxy", "server", "admin", "metrics", "settings", "reload",
            ],
        ),
        // listener certificates: built from the config, used by settings, reload and server
        (
            "tls",
            &[
                "backend", "upstream", "proxy", "server", "admin", "settings", "reload", "acme",
            ],
        ),
        // ACME: above config and tls, below the pipeline that answers its challenges and the
        // wiring that starts its service
        (
            "acme",
            &[
                "backend", "upstream", "proxy", "server", "admin", "settings", "reload", "metrics",
            ],
        ),
    ];
    let mut broken = Vec::new();
    for (module, forbidden) in rules {
        for dep in graph.get(*module).into_iter().flatten() {
            if forbidden.contains(&dep.as_str()) {
                broken.push(format!("{module} imports {dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
