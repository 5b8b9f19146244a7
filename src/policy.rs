//! Which operations pass through to the kernel, for which entry.
//!
//! A *decision* is attached to every inode when it is first looked up: the
//! last rule of the policy file that matches the inode's path (relative to
//! SOURCE), or else its parent's decision, or else the global default from
//! `--passthrough-ops`. A decision gives one ops mask for directories and
//! one for regular files (a rule may set only one of them; the other is
//! inherited). Symlinks and special files never get a backing.
//!
//! Decisions are taken once per inode: a file renamed across subtrees keeps
//! the decision of its first lookup until the kernel forgets it (the kernel
//! keeps the backing on the inode until eviction, see the series' design
//! document).
//!
//! Policy file (TOML):
//! ```toml
//! [default]               # optional; replaces --passthrough-ops
//! dirs  = ["getattr", "readdir", "getxattr", "listxattr"]
//! files = ["all"]
//!
//! [[rule]]
//! path  = "private"       # a subtree: this path and everything below
//! dirs  = ["none"]
//! files = ["none"]
//!
//! [[rule]]
//! glob  = "**/*.jpg"      # globs match the whole relative path; `*` stays
//!                         # within one component, `**` crosses them
//! files = ["getattr", "open", "read"]
//! ```

use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};

use globset::GlobMatcher;
use serde::Deserialize;

use crate::fuse::abi::{self, Opcode};
use crate::inode_table::{Inode, InodeTable, Kind};

/// An op name usable in `--passthrough-ops` and policy files, and the
/// opcodes its bit(s) stand for.
const OP_NAMES: &[(&str, &[Opcode])] = &[
    ("getattr", &[Opcode::Getattr]),
    ("statx", &[Opcode::Statx]),
    ("setattr", &[Opcode::Setattr]),
    ("getxattr", &[Opcode::Getxattr]),
    ("listxattr", &[Opcode::Listxattr]),
    ("setxattr", &[Opcode::Setxattr]),
    ("removexattr", &[Opcode::Removexattr]),
    ("readdir", &[Opcode::Readdir]),
    ("open", &[Opcode::Open]),
    ("read", &[Opcode::Read]),
    ("write", &[Opcode::Write]),
    ("readlink", &[Opcode::Readlink]),
    ("access", &[Opcode::Access]),
    ("mkdir", &[Opcode::Mkdir]),
    ("rmdir", &[Opcode::Rmdir]),
    ("unlink", &[Opcode::Unlink]),
    ("create", &[Opcode::Create]),
    ("lookup", &[Opcode::Lookup]),
];

/// LOOKUP in a directory's mask: the kernel resolves names below it in the
/// backing directory itself (patch 0015), without asking the daemon, so the
/// daemon's per-name decisions (policy rules, media provider) no longer
/// apply below it. Directories only; not part of `all` (see
/// [`Policy::allow_dir_lookup`]).
pub const LOOKUP_OP: u64 = abi::passthrough_op(Opcode::Lookup);

/// What `--xattr off` takes out of every mask. The xattr ops, or the
/// kernel would serve them from the backing inode all the same. And
/// SETATTR: whether a chown or truncate must remove `security.capability`
/// the kernel decides by reading it through the mount
/// (`security_inode_need_killpriv()`), which then finds none, so a SETATTR
/// passed through to the backing inode would keep a capability that
/// natively goes (tests/killpriv.rs, inside the patched kernel). Served by
/// the daemon, the chown or truncate is SOURCE's own, which removes it.
pub fn xattr_off_ops() -> u64 {
    [
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Setxattr,
        Opcode::Removexattr,
        Opcode::Setattr,
    ]
    .iter()
    .fold(0, |m, &op| m | abi::passthrough_op(op))
}

/// Every bit we know a name for, except `lookup`.
pub fn all_ops() -> u64 {
    OP_NAMES
        .iter()
        .flat_map(|(_, ops)| ops.iter())
        .fold(0, |m, &op| m | abi::passthrough_op(op))
        & !LOOKUP_OP
}

/// Does an op list name `all`, with no `-lookup` or `-all` after it?
/// (`--passthrough-ops all` also lets the kernel look names up when that
/// is safe, see [`Policy::allow_dir_lookup`]; `all,-lookup` does not.)
pub fn names_all(list: &str) -> bool {
    list.split(',').fold(false, |all, n| {
        let n = n.trim();
        if n.eq_ignore_ascii_case("all") {
            true
        } else if n.eq_ignore_ascii_case("-all") || n.eq_ignore_ascii_case("-lookup") {
            false
        } else {
            all
        }
    })
}

/// What is wrong with a policy file or an op list, as one line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<PolicyError>,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("unknown op '{name}' (known: {known}, all, none; -NAME removes one)")]
    UnknownOp { name: String, known: String },
    #[error("rule {rule}: path '{path}' must not contain . or ..")]
    DotPath { rule: usize, path: String },
    #[error("rule {rule}: give exactly one of `path` or `glob`")]
    PathOrGlob { rule: usize },
    #[error("rule {rule}: sets neither `dirs` nor `files`")]
    NoMask { rule: usize },
    #[error("rule {rule}: bad glob '{glob}': {source}")]
    RuleGlob {
        rule: usize,
        glob: String,
        source: globset::Error,
    },
    #[error("bad glob '{glob}': {source}")]
    Glob {
        glob: String,
        source: globset::Error,
    },
    #[error("too many rules")]
    TooManyRules,
}

/// Parses `getattr,statx,read` / `all` / `none` into a mask. A name with
/// a leading `-` takes its bits out of what the names before it gave:
/// `all,-getxattr` is every op but GETXATTR. Names apply left to right.
pub fn parse_ops(list: &str) -> Result<u64, PolicyError> {
    parse_op_names(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
}

fn parse_op_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<u64, PolicyError> {
    let mut mask = 0;
    for n in names {
        let n = n.to_ascii_lowercase();
        let (remove, name) = match n.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, n.as_str()),
        };
        let bits = op_bits(name)?;
        if remove {
            mask &= !bits;
        } else {
            mask |= bits;
        }
    }
    Ok(mask)
}

/// The bits of one op name (lower case), `all` or `none`.
fn op_bits(name: &str) -> Result<u64, PolicyError> {
    match name {
        "all" => Ok(all_ops()),
        "none" => Ok(0),
        _ => {
            let (_, ops) = OP_NAMES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                let known: Vec<&str> = OP_NAMES.iter().map(|(n, _)| *n).collect();
                PolicyError::UnknownOp {
                    name: name.to_string(),
                    known: known.join(", "),
                }
            })?;
            Ok(ops.iter().fold(0, |m, &op| m | abi::passthrough_op(op)))
        }
    }
}

/// How a rule selects paths.
enum Matcher {
    /// A subtree: the path itself and everything below it.
    Prefix(String),
    Glob(GlobMatcher),
}

impl Matcher {
    fn matches(&self, rel: &str) -> bool {
        match self {
            Matcher::Prefix(p) => {
                p.is_empty()
                    || rel == p
                    || (rel.starts_with(p.as_str()) && rel.as_bytes().get(p.len()) == Some(&b'/'))
            }
            Matcher::Glob(g) => g.is_match(rel),
        }
    }

    /// The literal start of the paths this rule can match (`what` is the
    /// rule's text): a prefix rule's path and "/", a glob's text up to its
    /// first wildcard. Lower case, as some globs ignore case.
    fn literal_start(&self, what: &str) -> String {
        match self {
            Matcher::Prefix(p) if p.is_empty() => String::new(),
            Matcher::Prefix(p) => format!("{}/", p.to_ascii_lowercase()),
            Matcher::Glob(_) => {
                let what = what.trim_start_matches('/');
                let end = what.find(['*', '?', '[', '{', '\\']).unwrap_or(what.len());
                what[..end].to_ascii_lowercase()
            }
        }
    }
}

struct Rule {
    what: String,
    matcher: Matcher,
    dirs: Option<u64>,
    files: Option<u64>,
}

/// The whole policy. Decision ids stored in inodes: 0 = undecided,
/// 1 = default, n + 2 = rule n (with its unset half inherited).
pub struct Policy {
    default_dirs: u64,
    default_files: u64,
    rules: Vec<Rule>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field(
                "default_dirs",
                &crate::backing::mask_names(self.default_dirs),
            )
            .field(
                "default_files",
                &crate::backing::mask_names(self.default_files),
            )
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| r.what.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    default: Option<MasksFormat>,
    #[serde(default)]
    rule: Vec<RuleFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MasksFormat {
    dirs: Option<Vec<String>>,
    files: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFormat {
    path: Option<String>,
    glob: Option<String>,
    dirs: Option<Vec<String>>,
    files: Option<Vec<String>>,
}

fn names_mask(v: &Option<Vec<String>>) -> Result<Option<u64>, PolicyError> {
    v.as_ref()
        .map(|names| parse_op_names(names.iter().map(String::as_str)))
        .transpose()
}

impl Policy {
    /// The same mask everywhere.
    pub fn uniform(mask: u64) -> Policy {
        Policy {
            default_dirs: mask,
            default_files: mask,
            rules: Vec::new(),
        }
    }

    /// Reads a policy file; `default_mask` (from --passthrough-ops) applies
    /// unless the file has a `[default]` section.
    pub fn from_file(path: &Path, default_mask: u64) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, default_mask).map_err(|e| PolicyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    pub fn parse(text: &str, default_mask: u64) -> Result<Policy, PolicyError> {
        let f: FileFormat = toml::from_str(text)?;
        let mut p = Policy::uniform(default_mask);
        if let Some(d) = &f.default {
            p.default_dirs = names_mask(&d.dirs)?.unwrap_or(default_mask);
            p.default_files = names_mask(&d.files)?.unwrap_or(default_mask);
        }
        for (i, r) in f.rule.iter().enumerate() {
            let matcher = match (&r.path, &r.glob) {
                (Some(path), None) => {
                    let clean = path.trim_matches('/').to_string();
                    if clean.split('/').any(|c| c == ".." || c == ".") {
                        return Err(PolicyError::DotPath {
                            rule: i + 1,
                            path: path.clone(),
                        });
                    }
                    Matcher::Prefix(clean)
                }
                (None, Some(glob)) => {
                    let g = globset::GlobBuilder::new(glob.trim_start_matches('/'))
                        .literal_separator(true)
                        .build()
                        .map_err(|source| PolicyError::RuleGlob {
                            rule: i + 1,
                            glob: glob.clone(),
                            source,
                        })?;
                    Matcher::Glob(g.compile_matcher())
                }
                _ => return Err(PolicyError::PathOrGlob { rule: i + 1 }),
            };
            let (dirs, files) = (names_mask(&r.dirs)?, names_mask(&r.files)?);
            if dirs.is_none() && files.is_none() {
                return Err(PolicyError::NoMask { rule: i + 1 });
            }
            let what = r
                .path
                .clone()
                .or_else(|| r.glob.clone())
                .unwrap_or_default();
            p.rules.push(Rule {
                what,
                matcher,
                dirs,
                files,
            });
        }
        if p.rules.len() > u16::MAX as usize - 2 {
            return Err(PolicyError::TooManyRules);
        }
        Ok(p)
    }

    /// `--passthrough-ops all` without rules: directories also pass LOOKUP
    /// through. Only safe when every entry gets the same decision, as the
    /// kernel then resolves names without the daemon; with rules it does
    /// nothing (returns false).
    pub fn allow_dir_lookup(&mut self) -> bool {
        if !self.rules.is_empty() {
            return false;
        }
        self.default_dirs |= LOOKUP_OP;
        true
    }

    /// Takes `ops` out of every mask: the defaults and every rule's.
    pub fn remove_ops(&mut self, ops: u64) {
        self.default_dirs &= !ops;
        self.default_files &= !ops;
        for r in &mut self.rules {
            r.dirs = r.dirs.map(|m| m & !ops);
            r.files = r.files.map(|m| m & !ops);
        }
    }

    /// Adds a rule for a subtree (this path and everything below).
    pub fn add_path_rule(&mut self, path: &str, dirs: Option<u64>, files: Option<u64>) {
        let clean = path.trim_matches('/').to_string();
        self.rules.push(Rule {
            what: clean.clone(),
            matcher: Matcher::Prefix(clean),
            dirs,
            files,
        });
    }

    /// Adds a glob rule (matched against the whole relative path).
    pub fn add_glob_rule(
        &mut self,
        glob: &str,
        case_insensitive: bool,
        dirs: Option<u64>,
        files: Option<u64>,
    ) -> Result<(), PolicyError> {
        let g = globset::GlobBuilder::new(glob)
            .case_insensitive(case_insensitive)
            .literal_separator(true)
            .build()
            .map_err(|source| PolicyError::Glob {
                glob: glob.to_string(),
                source,
            })?;
        self.rules.push(Rule {
            what: glob.to_string(),
            matcher: Matcher::Glob(g.compile_matcher()),
            dirs,
            files,
        });
        Ok(())
    }

    /// Do decisions depend on where an entry is (any rule)? Then the inode
    /// table must keep names ([`InodeTable::track_names`]).
    pub fn needs_paths(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Is any op beyond read/write asked for anywhere? (Then inode
    /// passthrough is worth negotiating.)
    pub fn wants_inode_passthrough(&self) -> bool {
        let io = crate::backing::IO_OPS;
        let beyond = |m: u64| m & !io != 0;
        beyond(self.default_dirs)
            || beyond(self.default_files)
            || self
                .rules
                .iter()
                .any(|r| r.dirs.is_some_and(beyond) || r.files.is_some_and(beyond))
    }

    /// Whether any entry may have OPEN in its mask (the kernel then opens
    /// it without telling the daemon, and sends no RELEASE).
    pub fn may_pass_open(&self) -> bool {
        let open = abi::passthrough_op(Opcode::Open);
        let has = |m: u64| m & open != 0;
        has(self.default_dirs)
            || has(self.default_files)
            || self
                .rules
                .iter()
                .any(|r| r.dirs.is_some_and(has) || r.files.is_some_and(has))
    }

    /// Whether an inode of `kind`, decided `old` at `old_path`, can move to
    /// `new_path` (decided `new`) and keep its mask, and (a directory) the
    /// masks of everything below it. Inode passthrough attaches the mask to
    /// the kernel's inode for its life, so a move that would change one is
    /// refused (EXDEV). A directory moves only when both places decide
    /// alike and no rule can reach inside the old or new subtree; unknown
    /// paths are refused.
    pub fn move_keeps_masks(
        &self,
        kind: Kind,
        (old, old_path): (u16, Option<&str>),
        (new, new_path): (u16, Option<&str>),
    ) -> bool {
        if kind != Kind::Directory {
            return self.mask(old, kind) == self.mask(new, kind);
        }
        if self.masks(old) != self.masks(new) {
            return false;
        }
        let (Some(o), Some(n)) = (old_path, new_path) else {
            return false;
        };
        let below = [
            format!("{}/", o.to_ascii_lowercase()),
            format!("{}/", n.to_ascii_lowercase()),
        ];
        // A prefix rule reaches inside when it lies below either place (one
        // above a place covers all of it alike); a glob also when its
        // literal start is above (it may match by depth or name there).
        !self.rules.iter().any(|r| {
            let lit = r.matcher.literal_start(&r.what);
            let glob = matches!(r.matcher, Matcher::Glob(_));
            below
                .iter()
                .any(|b| lit.starts_with(b.as_str()) || (glob && b.starts_with(lit.as_str())))
        })
    }

    /// The mask a decision gives an inode of `kind`.
    pub fn mask(&self, decision: u16, kind: Kind) -> u64 {
        let (d, f) = self.masks(decision);
        match kind {
            Kind::Directory => d,
            // LOOKUP names a directory's entries: not for files
            Kind::Regular => f & !LOOKUP_OP,
            _ => 0,
        }
    }

    /// (dirs, files) of a decision, unset halves resolved to the default.
    fn masks(&self, decision: u16) -> (u64, u64) {
        match decision
            .checked_sub(2)
            .and_then(|i| self.rules.get(i as usize))
        {
            Some(r) => (
                r.dirs.unwrap_or(self.default_dirs),
                r.files.unwrap_or(self.default_files),
            ),
            None => (self.default_dirs, self.default_files),
        }
    }

    /// Decides for the entry `name` of directory `parent`.
    pub fn decide(&self, table: &InodeTable, parent: &Inode, name: &CStr) -> u16 {
        let inherited = match parent.backing.lock().decision {
            0 => 1,
            d => d,
        };
        if self.rules.is_empty() {
            return 1;
        }
        let Some(rel) = self.relative_path(table, parent, name) else {
            return inherited;
        };
        for (i, r) in self.rules.iter().enumerate().rev() {
            if r.matcher.matches(&rel) {
                return i as u16 + 2;
            }
        }
        inherited
    }

    /// Path of `parent/name` relative to SOURCE.
    pub fn relative_path(&self, table: &InodeTable, parent: &Inode, name: &CStr) -> Option<String> {
        let name = name.to_str().ok()?;
        let dir = table.relative_path(parent)?;
        Some(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    }

    /// Default masks, for the stats and logs.
    pub fn defaults(&self) -> (u64, u64) {
        (self.default_dirs, self.default_files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(op: Opcode) -> u64 {
        abi::passthrough_op(op)
    }

    #[test]
    fn op_lists() {
        assert_eq!(parse_ops("none").unwrap(), 0);
        assert_eq!(
            parse_ops("getattr, read").unwrap(),
            bit(Opcode::Getattr) | bit(Opcode::Read)
        );
        assert_eq!(parse_ops("all").unwrap(), all_ops());
        assert_eq!(all_ops() & LOOKUP_OP, 0, "`all` alone never has lookup");
        assert_eq!(
            parse_ops("lookup,getattr").unwrap(),
            LOOKUP_OP | bit(Opcode::Getattr)
        );
        assert!(names_all("getattr, ALL"));
        assert!(!names_all("getattr,lookup"));
        let e = parse_ops("getattr,frobnicate").unwrap_err();
        assert!(matches!(e, PolicyError::UnknownOp { .. }), "{e}");
        assert!(e.to_string().contains("unknown op 'frobnicate'"), "{e}");
    }

    /// `--xattr off`: no mask keeps an xattr op or SETATTR, in the
    /// defaults or in any rule, and the other ops stay.
    #[test]
    fn removed_ops_leave_every_mask() {
        let mut p = Policy::parse(
            "[[rule]]\npath = \"a\"\nfiles = [\"getxattr\", \"read\"]\n\
             [[rule]]\nglob = \"**/*.x\"\ndirs = [\"setattr\", \"listxattr\", \"readdir\"]\n",
            all_ops(),
        )
        .unwrap();
        p.remove_ops(xattr_off_ops());
        for decision in 0..4 {
            for kind in [Kind::Directory, Kind::Regular] {
                assert_eq!(
                    p.mask(decision, kind) & xattr_off_ops(),
                    0,
                    "{decision} {kind:?}"
                );
            }
        }
        assert_eq!(p.mask(2, Kind::Regular), bit(Opcode::Read));
        assert_eq!(p.mask(3, Kind::Directory), bit(Opcode::Readdir));
        assert_eq!(p.mask(0, Kind::Regular), all_ops() & !xattr_off_ops());
        assert_eq!(xattr_off_ops().count_ones(), 5);
    }

    /// `lookup` goes in directory masks only, and `all` gets it only
    /// without rules (the kernel would bypass their per-name decisions).
    #[test]
    fn lookup_for_directories_only_and_all_without_rules() {
        let mut p = Policy::uniform(parse_ops("all").unwrap());
        assert_eq!(p.mask(1, Kind::Directory) & LOOKUP_OP, 0);
        assert!(p.allow_dir_lookup());
        assert_eq!(p.mask(1, Kind::Directory), all_ops() | LOOKUP_OP);
        assert_eq!(p.mask(1, Kind::Regular), all_ops());

        let mut ruled = Policy::parse(TWO_RULES, all_ops()).unwrap();
        assert!(!ruled.allow_dir_lookup());
        assert_eq!(ruled.mask(1, Kind::Directory) & LOOKUP_OP, 0);

        // Named explicitly, in a policy file: honoured, for directories
        let p = Policy::parse(
            "[default]\ndirs = [\"getattr\", \"lookup\"]\nfiles = [\"getattr\", \"lookup\"]",
            0,
        )
        .unwrap();
        assert_eq!(p.mask(1, Kind::Directory), bit(Opcode::Getattr) | LOOKUP_OP);
        assert_eq!(p.mask(1, Kind::Regular), bit(Opcode::Getattr));
    }

    #[test]
    fn all_brings_lookup_unless_taken_out_after_it() {
        assert!(names_all("all"));
        assert!(names_all("ALL,-getxattr"));
        assert!(!names_all("getattr,read"));
        assert!(!names_all("all,-lookup"));
        assert!(!names_all("all,-all"));
        assert!(names_all("-lookup,all"));
    }

    #[test]
    fn op_lists_with_exclusions() {
        assert_eq!(
            parse_ops("all,-getxattr").unwrap(),
            all_ops() & !bit(Opcode::Getxattr)
        );
        assert_eq!(
            parse_ops("all, -READ, -write").unwrap(),
            all_ops() & !(bit(Opcode::Read) | bit(Opcode::Write))
        );
        // Left to right: a later name puts a removed op back.
        assert_eq!(parse_ops("all,-open,open").unwrap(), all_ops());
        assert_eq!(parse_ops("getattr,read,-all").unwrap(), 0);
        assert_eq!(parse_ops("-getattr").unwrap(), 0);
        // In a policy file's lists too.
        let p = Policy::parse(
            "[default]\ndirs = [\"all\", \"-readdir\"]\nfiles = [\"all\"]\n",
            0,
        )
        .unwrap();
        assert_eq!(p.defaults().0, all_ops() & !bit(Opcode::Readdir));
        for bad in ["all,-frobnicate", "all,-"] {
            let e = parse_ops(bad).unwrap_err();
            assert!(matches!(e, PolicyError::UnknownOp { .. }), "{bad}: {e}");
        }
    }

    /// A subtree rule, then a glob rule for files only.
    const TWO_RULES: &str = r#"
        [[rule]]
        path = "private/"
        dirs = ["none"]
        files = ["none"]
        [[rule]]
        glob = "**/*.jpg"
        files = ["getattr"]
    "#;

    #[test]
    fn file_rules_and_inheritance() {
        let p = Policy::parse(
            &format!(
                "[default]\ndirs = [\"getattr\", \"readdir\"]\nfiles = [\"all\"]\n{TWO_RULES}"
            ),
            0,
        )
        .unwrap();
        assert!(p.wants_inode_passthrough());
        assert_eq!(
            p.mask(1, Kind::Directory),
            bit(Opcode::Getattr) | bit(Opcode::Readdir)
        );
        assert_eq!(p.mask(1, Kind::Regular), all_ops());
        assert_eq!(p.mask(2, Kind::Regular), 0);
        // The glob rule sets only files: its dirs half is the default.
        assert_eq!(p.mask(3, Kind::Regular), bit(Opcode::Getattr));
        assert_eq!(p.mask(3, Kind::Directory), p.mask(1, Kind::Directory));
        assert_eq!(p.mask(1, Kind::Symlink), 0);
        let m = &p.rules[0].matcher;
        assert!(m.matches("private"));
        assert!(m.matches("private/a/b"));
        assert!(!m.matches("privateer"));
        assert!(p.rules[1].matcher.matches("a/b/c.jpg"));
    }

    /// Inode passthrough keeps an inode's mask for its life: moves that
    /// would change it (for a directory, anything below it) are refused.
    #[test]
    fn moves_that_would_change_a_mask_are_refused() {
        let p = Policy::parse(
            "[[rule]]\npath = \"a/private\"\nfiles = [\"none\"]\n\
             [[rule]]\nglob = \"DCIM/**/*.jpg\"\nfiles = [\"getattr\"]",
            all_ops(),
        )
        .unwrap();
        let (default, private, jpg) = (1, 2, 3);
        let file = |o: u16, n: u16| p.move_keeps_masks(Kind::Regular, (o, None), (n, None));
        assert!(file(default, default));
        assert!(!file(default, jpg), "into the glob's files");
        assert!(!file(private, default), "out of the private subtree");
        let dir = |o: &str, n: &str| {
            p.move_keeps_masks(Kind::Directory, (default, Some(o)), (default, Some(n)))
        };
        assert!(dir("b", "c"), "no rule reaches either subtree");
        assert!(dir("b/x", "Download/x"));
        assert!(!dir("a", "b"), "a/private would move along");
        assert!(!dir("b", "DCIM/b"), "the glob may match below DCIM/b");
        assert!(!dir("dcim/b", "c"), "globs may ignore case");
        assert!(!p.move_keeps_masks(Kind::Directory, (default, None), (default, Some("c"))));
        assert!(!p.move_keeps_masks(Kind::Directory, (default, Some("b")), (private, Some("c"))));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let err = |text: &str| Policy::parse(text, 0).unwrap_err();
        let e = err("[[rule]]\nglob = \"[\"\nfiles=[\"all\"]");
        assert!(matches!(e, PolicyError::RuleGlob { rule: 1, .. }), "{e}");
        assert!(e.to_string().starts_with("rule 1: bad glob '['"), "{e}");
        let e = err("[[rule]]\npath = \"a\"\nfiles=[\"nope\"]");
        assert!(matches!(e, PolicyError::UnknownOp { .. }), "{e}");
        let e = err("[[rule]]\npath = \"a\"");
        assert_eq!(e.to_string(), "rule 1: sets neither `dirs` nor `files`");
        let e = err("[[rule]]\npath = \"../x\"\nfiles=[\"all\"]");
        assert!(matches!(e, PolicyError::DotPath { rule: 1, .. }), "{e}");
        assert!(matches!(err("bogus = 1"), PolicyError::Toml(_)));
        let e = Policy::from_file(Path::new("/nonexistent/policy.toml"), 0).unwrap_err();
        assert!(matches!(e, PolicyError::Read { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("policy file /nonexistent/policy.toml: "),
            "{e}"
        );
    }

    /// A table on `dir` that keeps names (as the daemon's does with rules).
    fn table(dir: &Path) -> InodeTable {
        use std::os::fd::AsFd;
        let cwd = std::fs::File::open("/").unwrap();
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let o = libc::O_PATH | libc::O_DIRECTORY;
        let root = crate::sys::openat(cwd.as_fd(), &c, o, 0).unwrap();
        let proc = crate::sys::openat(cwd.as_fd(), c"/proc/self/fd", o, 0).unwrap();
        let t = InodeTable::new(root, proc, 16).unwrap();
        t.track_names();
        t
    }

    /// Decisions by path: a subtree rule matches whole components, the last
    /// matching rule wins, and an entry no rule names (or whose path is not
    /// known) inherits its directory's decision.
    #[test]
    fn decisions_by_path_last_rule_wins_else_inherited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("private/sub")).unwrap();
        let t = table(dir.path());
        let p = Policy::parse(TWO_RULES, all_ops()).unwrap();
        assert!(p.needs_paths());
        let root = t.get(crate::fuse::NodeId::ROOT).unwrap();
        assert_eq!(p.decide(&t, &root, c"private"), 2);
        assert_eq!(p.decide(&t, &root, c"privateer"), 1, "not a component");
        assert_eq!(p.decide(&t, &root, c"x.jpg"), 3);
        assert_eq!(p.decide(&t, &root, c"x.jpeg"), 1);
        // Below `private`, as the daemon would have it: named, decided.
        let private = t.lookup(&root, c"private").unwrap().inode;
        t.set_link(&private, root.nodeid, b"private");
        private.backing.lock().decision = 2;
        assert_eq!(p.decide(&t, &private, c"notes.txt"), 2);
        assert_eq!(p.decide(&t, &private, c"p.jpg"), 3, "the later rule wins");
        assert_eq!(p.mask(3, Kind::Regular), bit(Opcode::Getattr));
        assert_eq!(p.mask(2, Kind::Directory), 0);
        // A directory whose path is unknown: its entries inherit.
        let sub = t.lookup(&private, c"sub").unwrap().inode;
        sub.backing.lock().decision = 2;
        assert_eq!(t.relative_path(&sub), None);
        assert_eq!(p.decide(&t, &sub, c"y.jpg"), 2, "inherited");
        // Once named, the path decides again.
        t.set_link(&sub, private.nodeid, b"sub");
        assert_eq!(p.decide(&t, &sub, c"y.jpg"), 3);
        // No rules: one decision for all, no paths needed.
        let u = Policy::uniform(all_ops());
        assert!(!u.needs_paths());
        assert_eq!(u.decide(&t, &sub, c"y.jpg"), 1);
    }
}
