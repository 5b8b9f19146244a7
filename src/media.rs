//! Media-provider mode: a stand-in for Android's MediaProvider FUSE daemon.
//!
//! Most of the tree passes through to the kernel; the daemon keeps only the
//! ops it must police, per calling uid:
//!
//! - **Owner-only app dirs**: `Android/data/<pkg>` and `Android/obb/<pkg>`
//!   are visible only to the uid owning `<pkg>` (and root); the names under
//!   `Android/data` get entry timeout 0 so no app learns another's names from
//!   the dentry cache. The owner's own dir passes everything through.
//! - **Per-uid visibility of media**: in the media dirs an app without
//!   `read_media` sees only the files it created. The creator is the lower
//!   file's owner: the daemon creates files with the caller's credentials.
//! - **Redaction**: a caller without `media_location` reads the EXIF GPS
//!   values of JPEG files as zeros; such opens are served by the daemon
//!   (direct I/O, never passthrough), others' opens of the same file pass
//!   through. Writes are never redacted.
//! - **Case-insensitive lookup** in the media dirs (`DCIM/camera` finds
//!   `DCIM/Camera`).
//! - **Change log**: create, delete and rename events, one JSON line each.
//!
//! The config file stands in for MediaProvider's database (see
//! `examples/media-provider.toml`).

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::fuse::abi::{self, Opcode};
use crate::policy::{all_ops, Policy};

/// What an app may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// See every file in the media dirs, not only its own.
    pub read_media: bool,
    /// Read location metadata unredacted.
    pub media_location: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    storage: StorageFormat,
    #[serde(default)]
    app: Vec<AppFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StorageFormat {
    media_dirs: Vec<String>,
    app_dirs: Vec<String>,
    image_extensions: Vec<String>,
    case_insensitive: bool,
    change_log: Option<PathBuf>,
}

impl Default for StorageFormat {
    fn default() -> Self {
        StorageFormat {
            media_dirs: [
                "DCIM",
                "Pictures",
                "Movies",
                "Music",
                "Download",
                "Documents",
            ]
            .map(String::from)
            .to_vec(),
            app_dirs: ["Android/data", "Android/obb"].map(String::from).to_vec(),
            image_extensions: ["jpg", "jpeg"].map(String::from).to_vec(),
            case_insensitive: true,
            change_log: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFormat {
    package: String,
    uid: u32,
    #[serde(default)]
    permissions: Vec<String>,
}

/// The media-provider configuration and its change log.
pub struct MediaProvider {
    media_dirs: Vec<String>,
    app_dirs: Vec<String>,
    image_ext: Vec<String>,
    case_insensitive: bool,
    /// package -> owning uid
    packages: HashMap<String, u32>,
    /// uid -> permissions
    apps: HashMap<u32, Permissions>,
    log: Option<Mutex<std::fs::File>>,
    pub log_path: Option<PathBuf>,
}

impl std::fmt::Debug for MediaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaProvider")
            .field("media_dirs", &self.media_dirs)
            .field("app_dirs", &self.app_dirs)
            .field("apps", &self.apps.len())
            .finish()
    }
}

/// What is wrong with a media-provider configuration, as one line.
#[derive(Debug, thiserror::Error)]
pub enum MediaConfigError {
    #[error("media-provider config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("media-provider config {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<MediaConfigError>,
    },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("'{0}' must be a relative path without . or ..")]
    NotRelative(String),
    #[error("bad package name '{0}'")]
    BadPackage(String),
    #[error("app '{0}': uid 0 is root, not an app")]
    RootUid(String),
    #[error("app '{package}': unknown permission '{permission}' (read_media, media_location)")]
    UnknownPermission { package: String, permission: String },
    #[error("package '{0}' listed twice")]
    Twice(String),
    #[error("change_log {}: {source}", path.display())]
    ChangeLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn clean_rel(p: &str) -> Result<String, MediaConfigError> {
    let c = p.trim_matches('/').to_string();
    if c.is_empty() || c.split('/').any(|x| x == "." || x == ".." || x.is_empty()) {
        return Err(MediaConfigError::NotRelative(p.to_string()));
    }
    Ok(c)
}

/// How a lookup or directory entry looks to one caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Hidden,
    /// Visible; `volatile` entries get entry timeout 0 (their visibility
    /// depends on who asks).
    Visible {
        volatile: bool,
    },
}

impl MediaProvider {
    pub fn from_file(path: &Path) -> Result<MediaProvider, MediaConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| MediaConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        MediaProvider::parse(&text).map_err(|e| MediaConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    pub fn parse(text: &str) -> Result<MediaProvider, MediaConfigError> {
        let f: FileFormat = toml::from_str(text)?;
        let s = f.storage;
        let media_dirs = s
            .media_dirs
            .iter()
            .map(|d| clean_rel(d))
            .collect::<Result<Vec<_>, _>>()?;
        let app_dirs = s
            .app_dirs
            .iter()
            .map(|d| clean_rel(d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut packages = HashMap::new();
        let mut apps = HashMap::new();
        for a in &f.app {
            if a.package.is_empty() || a.package.contains('/') || a.package.starts_with('.') {
                return Err(MediaConfigError::BadPackage(a.package.clone()));
            }
            if a.uid == 0 {
                return Err(MediaConfigError::RootUid(a.package.clone()));
            }
            let mut p = Permissions::default();
            for perm in &a.permissions {
                match perm.as_str() {
                    "read_media" => p.read_media = true,
                    "media_location" => p.media_location = true,
                    other => {
                        return Err(MediaConfigError::UnknownPermission {
                            package: a.package.clone(),
                            permission: other.to_string(),
                        })
                    }
                }
            }
            if packages.insert(a.package.clone(), a.uid).is_some() {
                return Err(MediaConfigError::Twice(a.package.clone()));
            }
            // A uid shared by several packages gets the union of rights.
            let e = apps.entry(a.uid).or_insert(Permissions::default());
            e.read_media |= p.read_media;
            e.media_location |= p.media_location;
        }
        let log = match &s.change_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| MediaConfigError::ChangeLog {
                        path: p.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        Ok(MediaProvider {
            media_dirs,
            app_dirs,
            image_ext: s
                .image_extensions
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            case_insensitive: s.case_insensitive,
            packages,
            apps,
            log,
            log_path: s.change_log,
        })
    }

    fn perms(&self, uid: u32) -> Permissions {
        if uid == 0 {
            return Permissions {
                read_media: true,
                media_location: true,
            };
        }
        self.apps.get(&uid).copied().unwrap_or_default()
    }

    fn under(dirs: &[String], rel: &str) -> bool {
        dirs.iter().any(|d| {
            rel == d || (rel.starts_with(d.as_str()) && rel.as_bytes().get(d.len()) == Some(&b'/'))
        })
    }

    /// Is `rel` (relative to SOURCE) in a media dir (or one itself)?
    pub fn in_media(&self, rel: &str) -> bool {
        Self::under(&self.media_dirs, rel)
    }

    /// Is `dir_rel` a directory where names are matched case-insensitively?
    /// Every directory under the storage root (SOURCE) is, as on Android's
    /// shared storage (`dcim/Camera` finds `DCIM/camera`), when the config
    /// says so; names are stored as created.
    pub fn case_insensitive_dir(&self, _dir_rel: &str) -> bool {
        self.case_insensitive
    }

    /// Does `parent_rel/name` show to `uid`? `owner` is the entry's lower
    /// owner, `is_dir` its type.
    pub fn visibility(
        &self,
        uid: u32,
        parent_rel: &str,
        name: &[u8],
        owner: u32,
        is_dir: bool,
    ) -> Visibility {
        let name_s = String::from_utf8_lossy(name);
        // Android/data/<pkg>: the package's uid only.
        if self.app_dirs.iter().any(|d| d == parent_rel) {
            if uid == 0 || name == b".nomedia" {
                return Visibility::Visible { volatile: true };
            }
            return match self.packages.get(name_s.as_ref()) {
                Some(&owner_uid) if owner_uid == uid => Visibility::Visible { volatile: true },
                _ => Visibility::Hidden,
            };
        }
        if self.in_media(parent_rel) && !is_dir {
            if name == b".nomedia" || uid == 0 || self.perms(uid).read_media {
                return Visibility::Visible { volatile: true };
            }
            return if owner == uid {
                Visibility::Visible { volatile: true }
            } else {
                Visibility::Hidden
            };
        }
        Visibility::Visible { volatile: false }
    }

    /// Would reading `rel` need redaction for `uid`?
    pub fn redacts(&self, uid: u32, rel: &str) -> bool {
        if self.perms(uid).media_location || !self.in_media(rel) {
            return false;
        }
        let ext = rel
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        self.image_ext.contains(&ext)
    }

    /// Appends one event to the change log.
    pub fn log_event(&self, event: &str, uid: u32, path: &str, to: Option<&str>) {
        let Some(log) = &self.log else { return };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = match to {
            Some(t) => {
                serde_json::json!({"time": time, "event": event, "uid": uid, "path": path, "to": t})
            }
            None => serde_json::json!({"time": time, "event": event, "uid": uid, "path": path}),
        };
        let mut f = log.lock();
        let _ = writeln!(f, "{line}");
    }

    /// The ops mask preset: everything passes through except what is
    /// policed: directory listings where entries are filtered, and JPEGs in
    /// the media dirs, whose opens are decided per caller (read/write only:
    /// a privileged open passes I/O through with its own backing id, a
    /// redacted one is served by the daemon).
    pub fn policy(&self, default_mask: u64) -> Policy {
        let all = all_ops() & default_mask;
        // A listing filtered per caller must be read by the daemon, and the
        // directory opened by it too: a directory the kernel opens from its
        // backing caches its listing for every later caller.
        let listing_policed =
            all & !(abi::passthrough_op(Opcode::Readdir) | abi::passthrough_op(Opcode::Open));
        let mut p = Policy::uniform(all);
        for d in &self.app_dirs {
            p.add_path_rule(d, Some(listing_policed), Some(all));
            // The package dirs themselves, and all below: the owner's space.
            let _ = p.add_glob_rule(
                &format!("{}/*", glob_escape(d)),
                false,
                Some(all),
                Some(all),
            );
        }
        for d in &self.media_dirs {
            p.add_path_rule(d, Some(listing_policed), Some(all));
            for ext in &self.image_ext {
                let io = all & crate::backing::IO_OPS;
                let _ = p.add_glob_rule(
                    &format!("{}/**/*.{}", glob_escape(d), glob_escape(ext)),
                    true,
                    None,
                    Some(io),
                );
            }
        }
        p
    }
}

fn glob_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "*?[]{}\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Byte ranges of a JPEG that carry EXIF GPS values (to read as zeros).
///
/// Walks the JPEG segments up to the first scan, finds the APP1 "Exif"
/// segment, follows IFD0's GPSInfo pointer (tag 0x8825) and collects the
/// value bytes of every GPS entry: the inline 4 bytes, or the data they
/// point at. Tags and types stay, so the file still parses.
pub fn exif_gps_ranges(data: &[u8]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return out;
    }
    let mut pos = 2usize;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            break;
        }
        let marker = data[pos + 1];
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            break; // end of image / start of scan: no more metadata
        }
        let len = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        if len < 2 {
            break;
        }
        let payload = pos + 4;
        let end = (pos + 2 + len).min(data.len());
        if marker == 0xE1 && end >= payload + 6 && &data[payload..payload + 6] == b"Exif\0\0" {
            tiff_gps(&data[..end], payload + 6, &mut out);
        }
        pos += 2 + len;
    }
    out
}

fn tiff_gps(data: &[u8], tiff: usize, out: &mut Vec<Range<u64>>) {
    let le = match data.get(tiff..tiff + 2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return,
    };
    let u16_at = |o: usize| {
        data.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4).map(|b| {
            let a = [b[0], b[1], b[2], b[3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        })
    };
    let Some(ifd0) = u32_at(tiff + 4) else { return };
    let ifd0 = tiff + ifd0 as usize;
    let Some(n) = u16_at(ifd0) else { return };
    let mut gps = None;
    for i in 0..n as usize {
        let e = ifd0 + 2 + 12 * i;
        if u16_at(e) == Some(0x8825) {
            gps = u32_at(e + 8);
        }
    }
    let Some(gps) = gps else { return };
    let gps_ifd = tiff + gps as usize;
    let Some(n) = u16_at(gps_ifd) else { return };
    for i in 0..n as usize {
        let e = gps_ifd + 2 + 12 * i;
        let (Some(typ), Some(count)) = (u16_at(e + 2), u32_at(e + 4)) else {
            return;
        };
        let unit: u64 = match typ {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 => 4,
            5 | 10 | 12 => 8,
            _ => 1,
        };
        let size = unit.saturating_mul(count as u64);
        if size <= 4 {
            out.push((e + 8) as u64..(e + 12) as u64);
        } else if let Some(off) = u32_at(e + 8) {
            let start = (tiff + off as usize) as u64;
            out.push(start..start.saturating_add(size).min(data.len() as u64));
        }
    }
}

/// Zeroes the parts of `buf` (file bytes starting at `offset`) that fall in
/// `ranges`.
pub fn redact(buf: &mut [u8], offset: u64, ranges: &[Range<u64>]) {
    let end = offset + buf.len() as u64;
    for r in ranges {
        let (s, e) = (r.start.max(offset), r.end.min(end));
        if s < e {
            buf[(s - offset) as usize..(e - offset) as usize].fill(0);
        }
    }
}

/// A small JPEG whose EXIF carries GPS coordinates (for samples and tests):
/// SOI, APP1 Exif with IFD0 -> GPS IFD (latitude/longitude as rationals,
/// their refs inline), a tiny scan, EOI. `lat_deg`/`lon_deg` mark the bytes.
pub fn sample_jpeg_with_gps(lat_deg: u32, lon_deg: u32) -> Vec<u8> {
    let mut t: Vec<u8> = Vec::new();
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&8u32.to_le_bytes()); // IFD0 at 8
                                              // IFD0: one entry, GPSInfo -> 26
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&0x8825u16.to_le_bytes());
    t.extend_from_slice(&4u16.to_le_bytes()); // LONG
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&26u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // next IFD
    assert_eq!(t.len(), 26);
    // GPS IFD: 4 entries (LatRef, Lat, LonRef, Lon), data after it.
    let data_at = 26 + 2 + 4 * 12 + 4;
    t.extend_from_slice(&4u16.to_le_bytes());
    let entry = |t: &mut Vec<u8>, tag: u16, typ: u16, count: u32, val: u32| {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&typ.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&val.to_le_bytes());
    };
    entry(&mut t, 1, 2, 2, u32::from_le_bytes(*b"N\0\0\0"));
    entry(&mut t, 2, 5, 3, data_at as u32);
    entry(&mut t, 3, 2, 2, u32::from_le_bytes(*b"E\0\0\0"));
    entry(&mut t, 4, 5, 3, (data_at + 24) as u32);
    t.extend_from_slice(&0u32.to_le_bytes());
    for deg in [lat_deg, lon_deg] {
        for (num, den) in [(deg, 1u32), (30, 1), (1500, 100)] {
            t.extend_from_slice(&num.to_le_bytes());
            t.extend_from_slice(&den.to_le_bytes());
        }
    }
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&t);
    let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1];
    j.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    j.extend_from_slice(&app1);
    // A token scan and the end of the image.
    j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22, 0x33, 0xFF, 0xD9]);
    j
}

/// Shared handle used by the daemon.
pub type SharedMediaProvider = Arc<MediaProvider>;

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
        [storage]
        media_dirs = ["DCIM", "Pictures"]
        [[app]]
        package = "com.example.camera"
        uid = 10001
        permissions = ["read_media", "media_location"]
        [[app]]
        package = "com.example.notes"
        uid = 10002
    "#;

    #[test]
    fn visibility_rules() {
        let mp = MediaProvider::parse(CONF).unwrap();
        use Visibility::*;
        // App dirs: owner and root only; .nomedia always.
        assert_eq!(
            mp.visibility(10001, "Android/data", b"com.example.camera", 0, true),
            Visible { volatile: true }
        );
        assert_eq!(
            mp.visibility(10002, "Android/data", b"com.example.camera", 0, true),
            Hidden
        );
        assert_eq!(
            mp.visibility(0, "Android/data", b"com.example.camera", 0, true),
            Visible { volatile: true }
        );
        assert_eq!(
            mp.visibility(10002, "Android/data", b".nomedia", 0, false),
            Visible { volatile: true }
        );
        assert_eq!(
            mp.visibility(10002, "Android/data", b"unknown.pkg", 0, true),
            Hidden
        );
        // Media: own files, or everything with read_media.
        assert_eq!(
            mp.visibility(10002, "DCIM/Camera", b"a.jpg", 10001, false),
            Hidden
        );
        assert_eq!(
            mp.visibility(10002, "DCIM/Camera", b"b.jpg", 10002, false),
            Visible { volatile: true }
        );
        assert_eq!(
            mp.visibility(10001, "DCIM/Camera", b"b.jpg", 10002, false),
            Visible { volatile: true }
        );
        assert_eq!(
            mp.visibility(10002, "DCIM", b"Camera", 0, true),
            Visible { volatile: false }
        );
        assert_eq!(
            mp.visibility(10002, "other", b"x", 1, false),
            Visible { volatile: false }
        );
        assert!(mp.redacts(10002, "DCIM/Camera/a.JPG"));
        assert!(!mp.redacts(10001, "DCIM/Camera/a.jpg"));
        assert!(!mp.redacts(10002, "DCIM/Camera/a.png"));
        assert!(!mp.redacts(10002, "other/a.jpg"));
        assert!(mp.case_insensitive_dir("DCIM/Camera"));
        assert!(mp.case_insensitive_dir("Android"));
        assert!(mp.case_insensitive_dir(""));
    }

    #[test]
    fn preset_masks() {
        let mp = MediaProvider::parse(CONF).unwrap();
        let p = mp.policy(all_ops());
        assert!(p.wants_inode_passthrough());
    }

    #[test]
    fn bad_configs() {
        let e = MediaProvider::parse("[[app]]\npackage='a'\nuid=0").unwrap_err();
        assert!(matches!(e, MediaConfigError::RootUid(_)), "{e}");
        assert_eq!(e.to_string(), "app 'a': uid 0 is root, not an app");
        let e = MediaProvider::parse("[[app]]\npackage='a'\nuid=5\npermissions=['x']").unwrap_err();
        assert!(e.to_string().contains("unknown permission 'x'"), "{e}");
        assert!(matches!(
            MediaProvider::parse("[storage]\nmedia_dirs=['../x']"),
            Err(MediaConfigError::NotRelative(_))
        ));
        assert!(matches!(
            MediaProvider::parse("[[app]]\npackage='a/b'\nuid=5"),
            Err(MediaConfigError::BadPackage(_))
        ));
        let e = MediaProvider::from_file(Path::new("/nonexistent/m.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("media-provider config /nonexistent/m.toml: "),
            "{e}"
        );
    }

    #[test]
    fn gps_ranges_cover_only_the_values() {
        let j = sample_jpeg_with_gps(48, 11);
        let r = exif_gps_ranges(&j);
        assert_eq!(r.len(), 4);
        let mut red = j.clone();
        redact(&mut red, 0, &r);
        // The degrees (48 and 11) are gone, the structure is intact.
        let find = |h: &[u8], n: &[u8]| h.windows(n.len()).any(|w| w == n);
        assert!(find(&j, &48u32.to_le_bytes()) && !find(&red, &[48, 0, 0, 0, 1, 0, 0, 0]));
        assert_eq!(&red[..4], &j[..4]);
        assert_eq!(exif_gps_ranges(&red).len(), 4, "still parses");
        assert!(red.ends_with(&[0xFF, 0xD9]));
        // Partial windows.
        let mut part = j[40..80].to_vec();
        redact(&mut part, 40, &r);
        assert_eq!(part, red[40..80].to_vec());
        assert!(exif_gps_ranges(b"not a jpeg").is_empty());
        assert!(exif_gps_ranges(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00]).is_empty());
    }
}
