//! The module layering rules, checked by tests: no import cycles between
//! the modules of any crate of the workspace; and for the crates whose
//! modules docs/ARCHITECTURE.md lists in dependency order, every top-level
//! module is listed there and uses only modules listed above it.
//!
//! A module is a source file (`a/b.rs` and `a/b/mod.rs` are `a::b`). It
//! depends on every module it names through `crate::…` or `super::…`
//! (in code, not comments; a `#[cfg(test)]` tail is ignored: tests may use
//! anything). Naming an ancestor is the normal tree edge (a child uses what
//! its parent re-exports) and does not count. Among what is left, a cycle
//! (a strongly connected group of two or more modules) fails the test with
//! the modules and their edges.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path -> the modules it depends on.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph of the crate whose sources are under `src`.
pub fn import_graph(src: &Path) -> std::io::Result<Graph> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files)?;
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, text) in &files {
        let code = strip(text);
        let mut deps = BTreeSet::new();
        for path in referenced_paths(module, &code) {
            let Some(target) = resolve(&modules, &path) else {
                continue;
            };
            let ancestor = target.is_empty() || module.starts_with(&format!("{target}::"));
            if target != *module && !ancestor {
                deps.insert(target);
            }
        }
        graph.insert(module.clone(), deps);
    }
    Ok(graph)
}

/// The cycles of `graph`: each strongly connected group of two or more
/// modules, sorted.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then collect on the reversed graph.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        finish_order(graph, start, &mut seen, &mut order);
    }
    let mut reversed: Graph = graph.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (from, deps) in graph {
        for to in deps {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut groups = Vec::new();
    for start in order.iter().rev() {
        if assigned.contains(start) {
            continue;
        }
        let mut group = Vec::new();
        let mut stack = vec![start.clone()];
        assigned.insert(start.clone());
        while let Some(node) = stack.pop() {
            group.push(node.clone());
            for next in reversed.get(&node).into_iter().flatten() {
                if assigned.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        if group.len() > 1 {
            group.sort();
            groups.push(group);
        }
    }
    groups
}

fn finish_order(graph: &Graph, start: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
    if !seen.insert(start.to_owned()) {
        return;
    }
    // Iterative depth-first search: (node, index of the next edge to follow).
    let mut stack: Vec<(String, usize)> = vec![(start.to_owned(), 0)];
    while let Some((node, next)) = stack.pop() {
        let deps: Vec<&String> = graph.get(&node).into_iter().flatten().collect();
        if let Some(dep) = deps.get(next) {
            stack.push((node, next + 1));
            if seen.insert((*dep).clone()) {
                stack.push(((*dep).clone(), 0));
            }
        } else {
            order.push(node);
        }
    }
}

/// Reads every `.rs` file under `dir` (skipping `bin/`) keyed by module path.
fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.parent() == Some(root) && path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            collect(root, &path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            files.insert(parts.join("::"), std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// The code without line comments and without its `#[cfg(test)]` tail.
fn strip(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` or `super::a` path the code names, as a path from the
/// crate root (grouped imports `crate::a::{b, c::d}` are expanded one level).
fn referenced_paths(module: &str, code: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut paths = Vec::new();
    for (keyword, base) in [("crate::", ""), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(keyword) {
            let before_ok = rest[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            rest = &rest[at + keyword.len()..];
            if !before_ok {
                continue;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            let prefix = if base.is_empty() {
                String::new()
            } else {
                format!("{base}::")
            };
            let after = &rest[path.len()..];
            let group = after.trim_start_matches(':');
            if after.starts_with("::{") || (path.is_empty() && group.starts_with('{')) {
                for item in top_level_items(group) {
                    // `a::{b, c}` inside the group: `a` is enough to resolve.
                    let item = item.split("::{").next().unwrap_or_default();
                    let item = item.split(" as ").next().unwrap_or_default().trim();
                    if !item.is_empty() && item != "self" {
                        let joined = if path.is_empty() {
                            item.to_owned()
                        } else {
                            format!("{path}::{item}")
                        };
                        paths.push(format!("{prefix}{joined}"));
                    } else if item == "self" && !path.is_empty() {
                        paths.push(format!("{prefix}{path}"));
                    }
                }
            } else if !path.is_empty() {
                paths.push(format!("{prefix}{path}"));
            }
        }
    }
    paths
}

/// The comma-separated items of the `{…}` group `text` starts with, split
/// at its top level only.
fn top_level_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth > 1 {
                    current.push(c);
                }
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
                current.push(c);
            }
            ',' if depth == 1 => items.push(std::mem::take(&mut current)),
            _ if depth >= 1 => current.push(c),
            _ => {}
        }
    }
    items.push(current);
    items.into_iter().map(|i| i.trim().to_owned()).collect()
}

/// The longest module that is a prefix of `path` (the item's module).
fn resolve(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// The top-level modules of `graph` (`a::b` counts as `a`) with the
/// top-level modules each uses; the crate root is left out.
pub fn top_level(graph: &Graph) -> Graph {
    let head = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut top = Graph::new();
    for (module, deps) in graph {
        if module.is_empty() {
            continue;
        }
        let entry = top.entry(head(module)).or_default();
        for dep in deps {
            let dep = head(dep);
            if !dep.is_empty() && dep != head(module) {
                entry.insert(dep);
            }
        }
    }
    top
}

/// The order in which the crate's section of docs/ARCHITECTURE.md (from
/// its heading, bold `` `krate` ``, to the next heading) first names each of
/// `modules` in backticks outside parentheses (inside them are children and
/// types).
pub fn documented_order(doc: &str, krate: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let heading = format!("**`{krate}`**");
    let Some(start) = doc.find(&heading) else {
        return Vec::new();
    };
    let section = &doc[start + heading.len()..];
    let section = &section[..section.find("\n**`").unwrap_or(section.len())];
    let mut order: Vec<String> = Vec::new();
    // Names inside parentheses are a module's children or its types: only
    // those outside any count, each at its first mention.
    let mut depth = 0usize;
    for (i, piece) in section.split('`').enumerate() {
        if i % 2 == 0 {
            for c in piece.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        } else if depth == 0 && modules.contains(piece) && !order.iter().any(|m| m == piece) {
            order.push(piece.to_owned());
        }
    }
    order
}

/// What breaks the documented order: modules the doc does not list, and
/// uses of a module listed below the user.
pub fn order_violations(top: &Graph, order: &[String]) -> Vec<String> {
    let position = |m: &str| order.iter().position(|o| o == m);
    let mut found = Vec::new();
    for (module, deps) in top {
        let Some(at) = position(module) else {
            found.push(format!("{module} is not listed"));
            continue;
        };
        for dep in deps {
            if position(dep).is_some_and(|d| d > at) {
                found.push(format!("{module} uses {dep}, listed below it"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(m, deps)| {
                (
                    (*m).to_owned(),
                    deps.iter().map(|d| (*d).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn finds_a_cycle_and_nothing_in_a_tree() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &["a"]),
            ("e", &[]),
        ]);
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
        let tree = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &[]), ("d", &["a", "c"])]);
        assert!(cycles(&tree).is_empty());
    }

    #[test]
    fn reads_crate_super_and_grouped_paths() {
        let code =
            "use crate::{relay::{X, Y}, sys};\nuse super::shared::Z;\nlet a = crate::metrics::m();";
        let mut paths = referenced_paths("session::accept", code);
        paths.sort();
        assert!(paths.contains(&"relay".to_owned()), "{paths:?}");
        assert!(paths.contains(&"sys".to_owned()), "{paths:?}");
        assert!(
            paths.contains(&"session::shared::Z".to_owned()),
            "{paths:?}"
        );
        assert!(paths.contains(&"metrics::m".to_owned()), "{paths:?}");
    }

    /// The rule itself, on every crate of the workspace.
    #[test]
    fn no_crate_has_an_import_cycle() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut found = Vec::new();
        for krate in [
            "control",
            "gateway",
            "gateway-common",
            "netlab",
            "xtask",
            "tests",
        ] {
            let src = workspace.join(krate).join("src");
            let g = import_graph(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
            assert!(
                g.len() > 1,
                "{krate}: no modules found under {}",
                src.display()
            );
            for group in cycles(&g) {
                let edges: Vec<String> = group
                    .iter()
                    .map(|m| {
                        let inside: Vec<&String> =
                            g[m].iter().filter(|d| group.contains(d)).collect();
                        format!("{m} -> {inside:?}")
                    })
                    .collect();
                found.push(format!("{krate}: {}", edges.join("; ")));
            }
        }
        assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
    }

    #[test]
    fn order_needs_every_module_listed_and_uses_only_above() {
        let g = graph(&[("a", &[]), ("b", &["a"]), ("b::x", &["c"]), ("c", &["a"])]);
        let top = top_level(&g);
        assert_eq!(top["b"], ["a", "c"].iter().map(|s| s.to_string()).collect());
        let modules: BTreeSet<String> = top.keys().cloned().collect();
        let doc = "**`k`**\n- `a`: x (not `b`)\n- `c` uses `a`\n- `b`: `Thing`\n\n**`other`** `z`";
        let order = documented_order(doc, "k", &modules);
        assert_eq!(order, ["a", "c", "b"]);
        assert!(order_violations(&top, &order).is_empty());
        let wrong = ["b".to_owned(), "a".to_owned(), "c".to_owned()];
        assert_eq!(
            order_violations(&top, &wrong),
            ["b uses a, listed below it", "b uses c, listed below it"]
        );
        assert_eq!(
            order_violations(&top, &wrong[..2]),
            ["b uses a, listed below it", "c is not listed"]
        );
    }

    /// The documented order, on the crates docs/ARCHITECTURE.md lists
    /// module by module.
    #[test]
    fn modules_follow_the_documented_order() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let doc = std::fs::read_to_string(workspace.join("docs/ARCHITECTURE.md"))
            .expect("docs/ARCHITECTURE.md");
        let mut found = Vec::new();
        for krate in ["gateway", "control"] {
            let src = workspace.join(krate).join("src");
            let g = import_graph(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
            let top = top_level(&g);
            let modules: BTreeSet<String> = top.keys().cloned().collect();
            let order = documented_order(&doc, krate, &modules);
            for problem in order_violations(&top, &order) {
                found.push(format!("{krate}: {problem}"));
            }
        }
        assert!(
            found.is_empty(),
            "docs/ARCHITECTURE.md's module order does not hold:\n{}",
            found.join("\n")
        );
    }
}
