//! The shape of `src/`, checked: the import graph between modules has no
//! circles (file by file, and between the top-level modules), the `mqtt`
//! floor imports nothing else from the crate, no source file grows past
//! about 800 lines of non-test code, and no inline test module is left
//! longer than a screen.
//!
//! The graph is read with `syn` from every `use` and every path in
//! non-test code (`crate::`, `super::`, `self::` and child modules). A name
//! a module re-exports with `pub use` is followed to where it is defined,
//! so importing `broker::Broker` is an arrow to `broker`, and importing a
//! re-exported `broker::Session` is an arrow to `broker::session`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One module's path from the crate root, e.g. `["gateway", "codec"]`.
type ModPath = Vec<String>;

/// What one source file says about the modules it uses.
#[derive(Default)]
struct FileFacts {
    /// Absolute paths this module's non-test code names.
    uses: Vec<Vec<String>>,
    /// Names this module re-exports: name -> absolute path it stands for.
    reexports: BTreeMap<String, Vec<String>>,
}

struct Module {
    path: ModPath,
    file: PathBuf,
    facts: FileFacts,
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a library source file holds; `None` for the binaries' own
/// crates (`main.rs`, `bin/`) and for sibling test files.
fn module_path(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin" || p == "main.rs") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    if parts.iter().any(|p| p == "tests") {
        return None;
    }
    Some(parts)
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

struct Collector<'a> {
    here: &'a ModPath,
    /// Child modules of `here`, which a bare path may start with.
    children: &'a BTreeSet<String>,
    facts: FileFacts,
    /// Names brought in by `use` (alias -> absolute path), so a later
    /// `broker::Broker` after `use crate::broker;` resolves.
    aliases: BTreeMap<String, Vec<String>>,
}

impl Collector<'_> {
    /// The absolute path `segments` names from this module, or `None` for a
    /// path into another crate or a local name.
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => {
                let mut base = self.here.clone();
                base.pop();
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            name if self.children.contains(name) => {
                let mut base = self.here.clone();
                base.push(name.to_string());
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            name => {
                let mut base = self.aliases.get(name)?.clone();
                base.extend(rest.iter().cloned());
                return Some(base);
            }
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, public: bool) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, public);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                self.record(prefix, &name, &name, public);
            }
            syn::UseTree::Rename(r) => {
                self.record(prefix, &r.ident.to_string(), &r.rename.to_string(), public);
            }
            syn::UseTree::Glob(_) => {
                if let Some(abs) = self.absolute(prefix) {
                    self.facts.uses.push(abs);
                }
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree, public);
                }
            }
        }
    }

    fn record(&mut self, prefix: &[String], name: &str, alias: &str, public: bool) {
        let mut segments = prefix.to_vec();
        if name != "self" {
            segments.push(name.to_string());
        }
        let alias = if name == "self" {
            prefix.last().cloned().unwrap_or_default()
        } else {
            alias.to_string()
        };
        let Some(abs) = self.absolute(&segments) else {
            return;
        };
        if public {
            self.facts.reexports.insert(alias.clone(), abs.clone());
        }
        self.aliases.insert(alias, abs.clone());
        self.facts.uses.push(abs);
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // An inline module (not a file of its own) is part of this one.
        if m.content.is_some() {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        self.use_tree(&mut Vec::new(), &u.tree, public);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1
            && let Some(abs) = self.absolute(&segments)
        {
            self.facts.uses.push(abs);
        }
        syn::visit::visit_path(self, path);
    }
}

struct Crate {
    modules: BTreeMap<ModPath, Module>,
}

impl Crate {
    fn read() -> Crate {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        source_files(&src, &mut files);
        let paths: Vec<(ModPath, PathBuf)> = files
            .into_iter()
            .filter_map(|f| module_path(&src, &f).map(|p| (p, f)))
            .collect();
        let known: BTreeSet<ModPath> = paths.iter().map(|(p, _)| p.clone()).collect();
        let mut modules = BTreeMap::new();
        for (path, file) in paths {
            let children: BTreeSet<String> = known
                .iter()
                .filter(|k| k.len() == path.len() + 1 && k.starts_with(&path))
                .filter_map(|k| k.last().cloned())
                .collect();
            let text = std::fs::read_to_string(&file).expect("source file");
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut collector = Collector {
                here: &path,
                children: &children,
                facts: FileFacts::default(),
                aliases: BTreeMap::new(),
            };
            // Two passes, so a path used before its `use` line still resolves.
            collector.visit_file(&ast);
            collector.facts = FileFacts::default();
            collector.visit_file(&ast);
            let facts = collector.facts;
            modules.insert(path.clone(), Module { path, file, facts });
        }
        Crate { modules }
    }

    /// The module that defines what `path` names, following re-exports.
    fn defining_module(&self, path: &[String]) -> Option<ModPath> {
        let mut path = path.to_vec();
        for _ in 0..16 {
            let mut depth = path.len();
            while depth > 0 && !self.modules.contains_key(&path[..depth]) {
                depth -= 1;
            }
            let module = &self.modules[&path[..depth]];
            match path
                .get(depth)
                .and_then(|name| module.facts.reexports.get(name))
            {
                Some(target) if target.as_slice() != path.as_slice() => {
                    let mut next = target.clone();
                    next.extend(path[depth + 1..].iter().cloned());
                    path = next;
                }
                _ => return Some(path[..depth].to_vec()),
            }
        }
        None
    }

    /// Arrows between modules: who imports from whom.
    fn arrows(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut arrows: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for module in self.modules.values() {
            let out = arrows.entry(module.path.clone()).or_default();
            for used in &module.facts.uses {
                if let Some(target) = self.defining_module(used)
                    && target != module.path
                    && !target.is_empty()
                {
                    out.insert(target);
                }
            }
        }
        arrows
    }
}

fn name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_string()
    } else {
        path.join("::")
    }
}

/// Every circle in `arrows`, each as the strongly connected component it
/// lies in (Tarjan, iteratively).
fn circles<N: Ord + Clone>(arrows: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    let nodes: Vec<N> = arrows.keys().cloned().collect();
    let id: BTreeMap<&N, usize> = nodes.iter().enumerate().map(|(i, n)| (n, i)).collect();
    let next: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            arrows[n]
                .iter()
                .filter_map(|m| id.get(m).copied())
                .collect()
        })
        .collect();
    let mut index = vec![usize::MAX; nodes.len()];
    let mut low = vec![0; nodes.len()];
    let mut on_stack = vec![false; nodes.len()];
    let mut stack = Vec::new();
    let mut counter = 0;
    let mut found = Vec::new();
    for root in 0..nodes.len() {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 && index[v] == usize::MAX {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = next[v].get(*child) {
                *child += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 || next[v].contains(&v) {
                    component.sort();
                    found.push(component);
                }
            }
        }
    }
    found
}

#[test]
fn modules_import_without_circles() {
    let krate = Crate::read();
    let arrows = krate.arrows();
    let found = circles(&arrows);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let inside: BTreeSet<&ModPath> = c.iter().collect();
            let edges: Vec<String> = c
                .iter()
                .flat_map(|from| {
                    arrows[from]
                        .iter()
                        .filter(|to| inside.contains(to))
                        .map(move |to| format!("{} -> {}", name(from), name(to)))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

/// Arrows between the top-level modules (`broker`, `gateway`, ...).
fn top_level_arrows(krate: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in krate.arrows() {
        let Some(room) = from.first() else { continue };
        let out = rooms.entry(room.clone()).or_default();
        for to in tos {
            if let Some(target) = to.first()
                && target != room
            {
                out.insert(target.clone());
            }
        }
    }
    rooms
}

#[test]
fn top_level_modules_import_without_circles() {
    let rooms = top_level_arrows(&Crate::read());
    let found = circles(&rooms);
    assert!(
        found.is_empty(),
        "circles between top-level modules: {found:?}\narrows: {rooms:#?}"
    );
}

/// The top-level modules in the order README's "Code map" lists them
/// (`- \`name\`: ...` lines), from the ground up.
fn code_map() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Code map\n")
        .nth(1)
        .expect("README.md has a \"## Code map\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_code_map_is_the_real_layering() {
    let rooms = top_level_arrows(&Crate::read());
    let map = code_map();
    let position = |room: &str| map.iter().position(|m| m == room);
    let mut wrong = Vec::new();
    for (room, imports) in &rooms {
        let Some(at) = position(room) else {
            wrong.push(format!("`{room}` is missing from README's code map"));
            continue;
        };
        for import in imports {
            match position(import) {
                Some(below) if below < at => {}
                Some(_) => wrong.push(format!(
                    "`{room}` imports `{import}`, which README's code map lists above it"
                )),
                None => wrong.push(format!("`{import}` is missing from README's code map")),
            }
        }
    }
    for listed in &map {
        if !rooms.contains_key(listed) && !listed.ends_with(".rs") {
            wrong.push(format!(
                "README's code map lists `{listed}`, which is not a module"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_mqtt_floor_imports_nothing_from_the_crate() {
    let krate = Crate::read();
    for (from, tos) in krate.arrows() {
        if from.first().is_some_and(|m| m == "mqtt") {
            let outside: Vec<String> = tos
                .iter()
                .filter(|t| t.first().is_none_or(|m| m != "mqtt"))
                .map(name)
                .collect();
            assert!(outside.is_empty(), "{} imports {outside:?}", name(&from));
        }
    }
}

/// Lines of a source file before its `#[cfg(test)] mod tests`, and the
/// length of an inline test module if one is left.
fn code_and_inline_test_lines(text: &str) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests {"));
    match start {
        Some(at) => (at, lines.len() - at),
        None => (lines.len(), 0),
    }
}

#[test]
fn source_files_stay_readable() {
    let krate = Crate::read();
    let mut too_long = Vec::new();
    for module in krate.modules.values() {
        let text = std::fs::read_to_string(&module.file).expect("source file");
        let (code, inline_tests) = code_and_inline_test_lines(&text);
        if code > 800 {
            too_long.push(format!("{}: {code} lines of code", module.file.display()));
        }
        if inline_tests > 50 {
            too_long.push(format!(
                "{}: an inline test module of {inline_tests} lines (move it to a sibling tests.rs)",
                module.file.display()
            ));
        }
    }
    assert!(too_long.is_empty(), "{}", too_long.join("\n"));
}
