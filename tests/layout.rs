//! The layout's own rules, checked on the source and the built binary:
//! - no import cycles between modules: within each crate, the sibling modules under any parent
//!   form an acyclic graph of `crate::…` / `super::…` references (test code aside);
//! - crash points and the clock hook exist only with the `failpoints` feature: the `keepsake`
//!   binary built for this test names their variables exactly when the feature is on. `.ci/run` runs this
//!   test once with the feature (as the suite does) and once without, as a release is built.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules are checked, by source directory.
const CRATES: [&str; 3] = ["src", "raft/src", "archive/src"];

/// A module path inside one crate, e.g. `["server", "store"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// Every module of the crate under `root`, with its source text less test code: items after
/// `#[cfg(test)]`, and the files of modules declared that way. The binary's `main.rs` is not
/// part of the library's graph.
fn modules(root: &Path) -> BTreeMap<ModPath, String> {
    let mut out = BTreeMap::new();
    let mut test_only = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || (dir == root && path.ends_with("main.rs")) {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under the root").with_extension("");
            let mut parts: ModPath = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            // Comments name modules too ("see `crate::x`"): only code counts.
            let code: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
            let (code, tests) = without_test_items(&code);
            test_only.extend(tests.into_iter().map(|name| [parts.clone(), vec![name]].concat()));
            out.insert(parts, code);
        }
    }
    out.retain(|path, _| !test_only.iter().any(|t| path.starts_with(t)));
    out
}

/// `code` less every item that follows `#[cfg(test)]`, and the names of the modules declared
/// that way in files of their own (`#[cfg(test)] mod tests;`).
fn without_test_items(code: &str) -> (String, Vec<String>) {
    let (mut kept, mut names, mut rest) = (String::new(), Vec::new(), code);
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        // The item ends at its first `;` outside braces, or at the brace that closes its body.
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    let declared = item[..i].trim();
                    if let Some(name) = declared.strip_prefix("mod ").or_else(|| declared.strip_prefix("pub mod ")) {
                        names.push(name.trim().to_owned());
                    }
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    kept.push_str(rest);
    (kept, names)
}

/// Expands one `use` tree (`a::{self, b, c::d}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let (Some(open), Some(close)) = (tree.find('{'), tree.rfind('}')) else {
        // `a::b::{self}` names `a::b`.
        return vec![tree.strip_suffix("::self").unwrap_or(tree).to_owned()];
    };
    if close < open {
        return vec![tree.to_owned()];
    }
    let prefix = &tree[..open];
    let inner = &tree[open + 1..close];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).flat_map(|p| expand(&format!("{prefix}{}", p.trim()))).collect()
}

/// The tree of a `use` statement that starts on `line`, after any attributes and visibility,
/// and whether it is public.
fn use_tree(line: &str) -> Option<(bool, &str)> {
    let (mut line, mut public) = (line.trim_start(), false);
    loop {
        if line.starts_with("#[") {
            line = line[line.find(']')? + 1..].trim_start();
        } else if line.starts_with("pub(") {
            (line, public) = (line[line.find(')')? + 1..].trim_start(), true);
        } else if let Some(rest) = line.strip_prefix("pub ") {
            (line, public) = (rest.trim_start(), true);
        } else {
            return line.strip_prefix("use ").map(|tree| (public, tree));
        }
    }
}

/// Every `use` statement in `code`, whole (it may span lines), and whether it is public.
fn use_statements(code: &str) -> Vec<(bool, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((public, tree)) = use_tree(line) else { continue };
        let mut statement = tree.to_owned();
        for next in &lines[i + 1..] {
            if statement.contains(';') {
                break;
            }
            statement.push_str(next);
        }
        let statement = statement.split(';').next().unwrap_or_default().replace('\t', " ");
        out.push((public, statement));
    }
    out
}

/// What a module re-exports with `pub use`: each name as seen from outside, and its path.
fn reexports(code: &str) -> Vec<(String, String)> {
    let public = use_statements(code).into_iter().filter(|(public, _)| *public);
    public
        .flat_map(|(_, statement)| expand(&statement))
        .map(|path| match path.split_once(" as ") {
            Some((path, name)) => (name.trim().to_owned(), path.trim().to_owned()),
            None => (path.rsplit("::").next().unwrap_or_default().trim().to_owned(), path.trim().to_owned()),
        })
        .collect()
}

/// Every path a module's code names through `crate::`, `super::`, `self::` or a child module.
fn referenced_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements: a line that starts with `use`, after any attributes and visibility (a
    // "use " inside a string does not).
    paths.extend(use_statements(code).iter().flat_map(|(_, statement)| expand(statement)));
    // Paths written inline in code.
    for prefix in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String =
                code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(tail);
        }
    }
    paths
}

/// Where each module's re-exported names lead: (module, name) -> the module defining it.
type Reexports = BTreeMap<(ModPath, String), ModPath>;

/// The module a path names from inside `here`: the longest prefix that is a module, followed
/// through a re-export where the next name is one. None for a path into another crate.
fn resolve(here: &ModPath, path: &str, known: &BTreeSet<ModPath>, reexported: &Reexports) -> Option<ModPath> {
    let path = path.split(" as ").next().unwrap_or_default();
    let segments: Vec<&str> = path.split("::").map(str::trim).filter(|s| !s.is_empty()).collect();
    let child = |name: &str| known.contains(&[here.clone(), vec![name.to_owned()]].concat());
    let (mut base, rest) = match *segments.first()? {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (here.clone(), &segments[1..]),
        "super" => {
            // Each `super` is one step up from the module the code is in.
            let mut base = here.clone();
            let mut rest = &segments[..];
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        // A path that starts with a child module (`pub use store::X` in lib.rs).
        first if child(first) => (here.clone(), &segments[..]),
        _ => return None,
    };
    for s in rest {
        let next = [base.clone(), vec![(*s).to_owned()]].concat();
        if known.contains(&next) {
            base = next;
            continue;
        }
        if let Some(target) = reexported.get(&(base.clone(), (*s).to_owned())) {
            base = target.clone();
        }
        break;
    }
    Some(base)
}

/// The module graph's cycles, as `parent: a -> b -> … -> a`, for every parent whose children
/// refer to each other in a circle.
fn cycles(root: &Path) -> Vec<String> {
    let modules = modules(root);
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    // Re-exports first (a chain of them is followed one link per pass).
    let mut reexported = Reexports::new();
    for _ in 0..4 {
        for (here, code) in &modules {
            for (name, path) in reexports(code) {
                if let Some(target) = resolve(here, &path, &known, &reexported) {
                    reexported.insert((here.clone(), name), target);
                }
            }
        }
    }
    // Sibling edges under each parent.
    let mut edges: BTreeMap<ModPath, BTreeSet<(String, String)>> = BTreeMap::new();
    for (here, code) in &modules {
        for path in referenced_paths(code) {
            let Some(target) = resolve(here, &path, &known, &reexported) else { continue };
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < here.len() && common < target.len() {
                edges
                    .entry(here[..common].to_vec())
                    .or_default()
                    .insert((here[common].clone(), target[common].clone()));
            }
        }
    }
    let mut found = Vec::new();
    for (parent, edges) in &edges {
        let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in edges {
            graph.entry(a).or_default().push(b);
        }
        if let Some(cycle) = find_cycle(&graph) {
            found.push(format!("{}: {}", if parent.is_empty() { "crate".into() } else { parent.join("::") }, cycle));
        }
    }
    found
}

/// One cycle in `graph`, if it has any (depth-first search with colours).
fn find_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<String> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<String> {
        state.insert(node, false); // on the stack
        stack.push(node);
        for &next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(false) => {
                    let from = stack.iter().position(|n| *n == next).expect("on the stack");
                    let mut cycle: Vec<&str> = stack[from..].to_vec();
                    cycle.push(next);
                    return Some(cycle.join(" -> "));
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node, true); // done
        None
    }
    let mut state = BTreeMap::new();
    for &node in graph.keys() {
        if !state.contains_key(node) {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let found: Vec<String> =
        CRATES.iter().flat_map(|c| cycles(&repo().join(c)).into_iter().map(move |e| format!("{c}: {e}"))).collect();
    assert!(found.is_empty(), "import cycles between modules:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle_it_is_shown() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path();
    std::fs::create_dir_all(src.join("server")).expect("create server/");
    std::fs::write(src.join("lib.rs"), "pub mod replica;\npub mod server;\n").expect("write lib.rs");
    std::fs::write(src.join("replica.rs"), "use crate::server::status::from_error;\n").expect("write replica.rs");
    std::fs::write(src.join("server/mod.rs"), "pub mod status;\npub mod store;\n").expect("write server/mod.rs");
    std::fs::write(src.join("server/status.rs"), "pub fn from_error() {}\n").expect("write status.rs");
    std::fs::write(
        src.join("server/store.rs"),
        "use super::{status, super::replica::Replica};\nfn f() { let _ = crate::replica::write(); }\n",
    )
    .expect("write store.rs");
    assert_eq!(cycles(src), ["crate: replica -> server -> replica"]);
    // Test code is not part of the graph: a test module inline or in its own file.
    std::fs::write(src.join("replica.rs"), "#[cfg(test)]\nmod tests { use crate::server::status; }\n")
        .expect("write replica.rs");
    assert!(cycles(src).is_empty());
    std::fs::write(src.join("replica.rs"), "#[cfg(test)]\nmod tests;\npub fn write() {}\n").expect("write replica.rs");
    std::fs::create_dir_all(src.join("replica")).expect("create replica/");
    std::fs::write(src.join("replica/tests.rs"), "use crate::server::status;\n").expect("write replica/tests.rs");
    assert!(cycles(src).is_empty());
    // A name re-exported at the root still leads to the module that defines it.
    std::fs::write(
        src.join("lib.rs"),
        "pub mod replica;\npub mod server;\npub use server::status::{self, from_error as e};\n",
    )
    .expect("write lib.rs");
    std::fs::write(src.join("replica.rs"), "#[allow(unused)] pub(crate) use crate::e;\n").expect("write replica.rs");
    assert_eq!(cycles(src), ["crate: replica -> server -> replica"]);
}

#[test]
fn the_binary_holds_test_hooks_only_with_the_failpoints_feature() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_keepsake")).expect("read the keepsake binary");
    let names = |marker: &str| binary.windows(marker.len()).any(|w| w == marker.as_bytes());
    for marker in ["KEEPSAKE_CRASH_AT", "KEEPSAKE_STOP_AT", "KEEPSAKE_CLOCK_OFFSET_MS"] {
        assert_eq!(
            names(marker),
            cfg!(feature = "failpoints"),
            "the binary {} {marker} although it was built {} the failpoints feature",
            if names(marker) { "names" } else { "does not name" },
            if cfg!(feature = "failpoints") { "with" } else { "without" },
        );
    }
}
