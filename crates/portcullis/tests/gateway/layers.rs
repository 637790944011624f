//! The crate's modules import downwards only: no top-level module reaches, through
//! `crate::` paths, a module that reaches it back (test modules may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module each `crate::` path in `text` names, test modules left out.
fn imports(text: &str) -> BTreeSet<String> {
    // Unit tests sit in a `#[cfg(test)] mod tests` block at the end of a file.
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the names at the group's first level.
            let mut depth = 0;
            let mut name = String::new();
            let mut expecting = true;
            for c in group.chars() {
                if expecting && (c.is_alphanumeric() || c == '_') {
                    name.push(c);
                    continue;
                }
                if !name.is_empty() {
                    found.insert(std::mem::take(&mut name));
                    expecting = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting = true,
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn top_level_modules_import_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let targets = edges.entry(module.clone()).or_default();
        targets.extend(
            imports(&text)
                .into_iter()
                .filter(|target| *target != module),
        );
    }
    assert!(edges.contains_key("pipeline") && edges["pipeline"].contains("auth"));
    // The shared types sit below everything; configuration is plain data just above them.
    assert_eq!(edges["base"], BTreeSet::new(), "base imports nothing");
    assert!(
        edges["config"].iter().all(|target| target == "base"),
        "config imports only base: {:?}",
        edges["config"]
    );

    // A module that reaches itself through others is in a cycle.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start.as_str(), vec![start.as_str()])];
        while let Some((module, path)) = stack.pop() {
            for next in edges.get(module).into_iter().flatten() {
                assert!(
                    next != start,
                    "import cycle: {} -> {next}",
                    path.join(" -> ")
                );
                if seen.insert(next.as_str()) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
}

#[test]
fn grouped_and_nested_imports_are_read() {
    let found = imports(
        "use crate::{auth, cors::Cors, headers::{a, b}};\nfn f() { crate::body::full(x); }\n#[cfg(test)]\nmod tests { use crate::server; }",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["auth", "body", "cors", "headers"]
    );
}
