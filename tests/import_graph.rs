//! No import circles in `src/`: every file's `crate::…` and `super::…` paths (outside comments
//! and test modules) point one way. A circle means two files that cannot be read, changed or
//! tested one without the other; the last three (config ↔ telemetry config, the docs route ↔
//! start-up, the encoder ↔ its bench-only reference) were cut by moving what both needed into
//! a leaf or plugging the bench part in from outside. This test keeps it so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`telemetry::export::otlp`, `` for lib.rs) → source text without comments and
/// test modules.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                // Binaries are crates of their own: their `crate::` is not the library's.
                if relative != "bin" {
                    dirs.push(path);
                }
                continue;
            }
            let Some(stem) = relative.strip_suffix(".rs") else {
                continue;
            };
            let module = match stem {
                "lib" | "main" => continue,
                _ => stem.trim_end_matches("/mod").replace('/', "::"),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(module, code_of(&text));
        }
    }
    out
}

/// The code a file compiles to outside tests: comments removed, and everything from the first
/// `#[cfg(test)]` on (test modules close the files here).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://…") is not a comment.
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `a::b::c` paths after each occurrence of `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].trim_end_matches(':'));
    }
    out
}

/// The longest known module that `path` (relative to the crate) starts with.
fn resolve<'a>(path: &str, known: &'a BTreeSet<String>) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| known.get(&parts[..n].join("::")))
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, code) in &modules {
        let mut to = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            if let Some(target) = resolve(path, &known) {
                to.insert(target.clone());
            }
        }
        // `super::x` from `a::b::c` is `a::b::x` (the parent of a module's own file).
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for path in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                path.to_owned()
            } else {
                format!("{parent}::{path}")
            };
            if let Some(target) = resolve(&full, &known) {
                to.insert(target.clone());
            }
        }
        to.remove(module);
        edges.insert(module.clone(), to);
    }
    edges
}

/// The circles: strongly connected groups of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.edges[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(w, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.out.push(group);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(v, &mut state);
        }
    }
    state.out
}

#[test]
fn src_has_no_import_circles() {
    let edges = edges();
    assert!(edges.len() > 40, "{} modules found", edges.len());
    // The reader sees real imports: the export actor uses the encoder and the transport.
    assert!(edges["telemetry::export::actor"].contains("telemetry::export::transport"));
    assert!(edges["startup"].contains("routes"));
    let found = circles(&edges);
    assert!(found.is_empty(), "import circles: {found:?}");
}

#[test]
fn the_finder_finds_a_circle() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(circles(&edges), vec![vec!["a", "b", "c"]]);
}

#[test]
fn comments_strings_and_tests_are_not_imports() {
    let code = code_of(
        "use crate::a::B; // see crate::c\nlet u = \"http://x\"; crate::d::f();\n#[cfg(test)]\nuse crate::e;",
    );
    assert_eq!(paths_after(&code, "crate::"), ["a::B", "d::f"]);
    assert_eq!(paths_after("my_crate::x, crate::y", "crate::"), ["y"]);
}

/// The error boundary: the HTTP error (`errors.rs`) is the routes' to build. The queries, the
/// job queue and the domain return their own errors, which the routes map.
#[test]
fn below_the_routes_nothing_knows_the_http_error() {
    let edges = edges();
    let below: Vec<&String> = edges
        .keys()
        .filter(|m| m.starts_with("db") || m.starts_with("domain") || *m == "audio::jobs")
        .collect();
    assert!(below.len() >= 8, "{below:?}");
    for module in below {
        assert!(
            !edges[module].contains("errors"),
            "{module} imports errors.rs"
        );
    }
    // The routes do.
    assert!(edges["routes::auth"].contains("errors"));
}
