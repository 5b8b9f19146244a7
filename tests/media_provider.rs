//! The media-provider mode, as several app uids (setpriv).

mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use common::*;
use passthroughfs::media::{exif_gps_ranges, redact, sample_jpeg_with_gps};

const CAMERA: u32 = 10001; // read_media + media_location
const NOTES: u32 = 10002; // no permissions
const GALLERY: u32 = 10003; // read_media only

fn config(log: &Path) -> String {
    format!(
        r#"
[storage]
media_dirs = ["DCIM", "Pictures"]
change_log = "{}"
[[app]]
package = "com.example.camera"
uid = {CAMERA}
permissions = ["read_media", "media_location"]
[[app]]
package = "com.example.notes"
uid = {NOTES}
[[app]]
package = "com.example.gallery"
uid = {GALLERY}
permissions = ["read_media"]
"#,
        log.display()
    )
}

fn fill(s: &Path) {
    for d in [
        "DCIM/Camera",
        "Pictures",
        "Android/data",
        "Android/obb",
        "shared",
    ] {
        fs::create_dir_all(s.join(d)).unwrap();
        fs::set_permissions(s.join(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    for (pkg, uid) in [("com.example.camera", CAMERA), ("com.example.notes", NOTES)] {
        for top in ["Android/data", "Android/obb"] {
            let d = s.join(top).join(pkg);
            fs::create_dir(&d).unwrap();
            chown(&d, Some(uid), Some(uid)).unwrap();
            fs::write(d.join("state"), pkg).unwrap();
            chown(d.join("state"), Some(uid), Some(uid)).unwrap();
        }
    }
    let a = s.join("DCIM/Camera/photo_a.jpg");
    fs::write(&a, sample_jpeg_with_gps(48, 11)).unwrap();
    chown(&a, Some(CAMERA), Some(CAMERA)).unwrap();
    let b = s.join("DCIM/Camera/photo_b.jpg");
    fs::write(&b, sample_jpeg_with_gps(52, 13)).unwrap();
    chown(&b, Some(NOTES), Some(NOTES)).unwrap();
    fs::write(s.join("DCIM/Camera/.nomedia"), b"").unwrap();
    fs::write(s.join("shared/readme.txt"), vec![b'r'; 1 << 20]).unwrap();
    fs::set_permissions(
        s.join("shared/readme.txt"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}

fn media_mount() -> (Mount, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("changes.log");
    let conf = dir.path().join("media.toml");
    fs::write(&conf, config(&log)).unwrap();
    let m = Mount::with_source(
        fill,
        &[
            "--media-provider",
            conf.to_str().unwrap(),
            "-o",
            "allow_other",
        ],
    );
    // Keep the config dir alive with the mount.
    std::mem::forget(dir);
    (m, log)
}

fn ls(uid: u32, dir: &Path) -> Vec<String> {
    let (ok, out) = sh_as(uid, uid, &format!("ls -A {}", dir.display()));
    assert!(ok, "ls as {uid}: {out}");
    let mut v: Vec<String> = out.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn app_dirs_are_owner_only() {
    require_root!();
    let (m, _) = media_mount();
    let data = m.m("Android/data");
    assert_eq!(ls(NOTES, &data), vec!["com.example.notes"]);
    assert_eq!(ls(CAMERA, &data), vec!["com.example.camera"]);
    assert_eq!(ls(0, &data).len(), 2, "root sees every package");
    // The owner reads and writes its own dir...
    let own = m.m("Android/data/com.example.camera");
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!("cat {0}/state && echo new > {0}/created", own.display()),
    );
    assert!(ok && out.starts_with("com.example.camera"), "{out}");
    // ...and, right after, another app still cannot see it (no dentry leak).
    for path in [
        own.clone(),
        own.join("state"),
        m.m("Android/obb/com.example.camera/state"),
    ] {
        let (ok, out) = sh_as(NOTES, NOTES, &format!("stat {}", path.display()));
        assert!(!ok && out.contains("No such file"), "{path:?}: {out}");
    }
    // Nor create another package's dir.
    let (ok, _) = sh_as(
        NOTES,
        NOTES,
        &format!("mkdir {}/com.example.gallery", data.display()),
    );
    assert!(!ok, "notes must not create gallery's app dir");
    let (ok, out) = sh_as(
        GALLERY,
        GALLERY,
        &format!("mkdir {}/com.example.gallery", data.display()),
    );
    assert!(ok, "{out}");
    assert!(m.unmount().success());
}

#[test]
fn media_is_visible_to_its_creator_or_with_read_media() {
    require_root!();
    let (m, _) = media_mount();
    let cam = m.m("DCIM/Camera");
    assert_eq!(ls(NOTES, &cam), vec![".nomedia", "photo_b.jpg"]);
    assert_eq!(
        ls(GALLERY, &cam),
        vec![".nomedia", "photo_a.jpg", "photo_b.jpg"]
    );
    let (ok, out) = sh_as(NOTES, NOTES, &format!("cat {}/photo_a.jpg", cam.display()));
    assert!(!ok && out.contains("No such file"), "{out}");
    // Rename and unlink are policed too.
    let (ok, _) = sh_as(NOTES, NOTES, &format!("rm {}/photo_a.jpg", cam.display()));
    assert!(!ok);
    assert!(m.s("DCIM/Camera/photo_a.jpg").exists());
    let (ok, _) = sh_as(
        NOTES,
        NOTES,
        &format!("mv {0}/photo_b.jpg {0}/photo_a.jpg", cam.display()),
    );
    assert!(!ok, "must not replace a file it cannot see");
    // A new file by notes: notes sees it, gallery too, camera too.
    let (ok, out) = sh_as(
        NOTES,
        NOTES,
        &format!("echo hi > {}/note.jpg", cam.display()),
    );
    assert!(ok, "{out}");
    assert_eq!(
        fs::metadata(m.s("DCIM/Camera/note.jpg")).unwrap().uid_(),
        NOTES
    );
    assert!(ls(NOTES, &cam).contains(&"note.jpg".to_string()));
    assert!(ls(CAMERA, &cam).contains(&"note.jpg".to_string()));
    assert!(m.unmount().success());
}

trait Uid {
    fn uid_(&self) -> u32;
}
impl Uid for fs::Metadata {
    fn uid_(&self) -> u32 {
        std::os::unix::fs::MetadataExt::uid(self)
    }
}

#[test]
fn gps_is_redacted_without_media_location() {
    require_root!();
    let (m, _) = media_mount();
    let original = fs::read(m.s("DCIM/Camera/photo_a.jpg")).unwrap();
    let ranges = exif_gps_ranges(&original);
    assert!(!ranges.is_empty());
    let mut expected = original.clone();
    redact(&mut expected, 0, &ranges);
    assert_ne!(expected, original);
    let out = m.dir.path().join("copies");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let p = m.m("DCIM/Camera/photo_a.jpg");

    let reads_before = m.requests("READ");
    let (ok, o) = sh_as(
        GALLERY,
        GALLERY,
        &format!("cat {} > {}/gallery.jpg", p.display(), out.display()),
    );
    assert!(ok, "{o}");
    let reads_redacted = m.requests("READ");
    assert!(
        reads_redacted > reads_before,
        "the redacted read was served by the daemon"
    );
    assert_eq!(
        fs::read(out.join("gallery.jpg")).unwrap(),
        expected,
        "GPS values read as zeros"
    );

    let (ok, o) = sh_as(
        CAMERA,
        CAMERA,
        &format!("cat {} > {}/camera.jpg", p.display(), out.display()),
    );
    assert!(ok, "{o}");
    assert_eq!(
        fs::read(out.join("camera.jpg")).unwrap(),
        original,
        "intact for media_location"
    );
    let passthrough = m.stats()["backing"]["mode"] != "off";
    if passthrough {
        assert_eq!(
            m.requests("READ"),
            reads_redacted,
            "the privileged read passed through"
        );
    }
    assert_eq!(
        fs::read(m.s("DCIM/Camera/photo_a.jpg")).unwrap(),
        original,
        "SOURCE untouched"
    );

    // Writes are never redacted (camera owns the file).
    let (ok, o) = sh_as(
        CAMERA,
        CAMERA,
        &format!(
            "cp {}/camera.jpg {}/DCIM/Camera/copy.jpg",
            out.display(),
            m.mnt.display()
        ),
    );
    assert!(ok, "{o}");
    assert_eq!(fs::read(m.s("DCIM/Camera/copy.jpg")).unwrap(), original);

    // Outside the media dirs reads pass through: 0 more READs.
    let before = m.requests("READ");
    let (ok, _) = sh_as(
        NOTES,
        NOTES,
        &format!("cat {} > /dev/null", m.m("shared/readme.txt").display()),
    );
    assert!(ok);
    if passthrough {
        assert_eq!(
            m.requests("READ"),
            before,
            "unpoliced reads never reach the daemon"
        );
    }
    assert!(m.unmount().success());
}

#[test]
fn media_names_are_case_insensitive() {
    require_root!();
    let (m, _) = media_mount();
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!(
            "cmp {}/DCIM/camera/PHOTO_A.JPG {}",
            m.mnt.display(),
            m.s("DCIM/Camera/photo_a.jpg").display()
        ),
    );
    assert!(ok, "{out}");
    // Creating through another case lands in the existing directory.
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!(
            "echo x > {}/DCIM/CAMERA/new.jpg && ls {}/DCIM",
            m.mnt.display(),
            m.mnt.display()
        ),
    );
    assert!(ok, "{out}");
    assert!(m.s("DCIM/Camera/new.jpg").exists());
    assert_eq!(
        fs::read_dir(m.s("DCIM")).unwrap().count(),
        1,
        "no second Camera dir"
    );
    // mkdir of a case variant is EEXIST, as on a case-insensitive fs.
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!("mkdir {}/DCIM/camera", m.mnt.display()),
    );
    assert!(!ok && out.contains("exists"), "{out}");
    // Both spellings agree afterwards (consistent dentries).
    let a = fs::metadata(m.m("DCIM/Camera/new.jpg")).unwrap();
    let b = fs::metadata(m.m("DCIM/camera/NEW.jpg")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&a),
        std::os::unix::fs::MetadataExt::ino(&b)
    );
    // Outside the media dirs too: Android's shared storage matches names
    // case-insensitively from its root down.
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!("cat {}/SHARED/readme.txt | wc -c", m.mnt.display()),
    );
    assert!(ok && out.trim() == "1048576", "{out}");
    assert!(m.unmount().success());
}

/// With the example config, as the camera app: `dcim/Camera/IMG_B.jpg` is
/// found like `DCIM/camera/img_b.jpg` (names fold case from the storage
/// root, not only inside the media dirs), a create through a folded path
/// lands in the existing directories and keeps the name as given, and the
/// per-app rules still apply to folded names.
#[test]
fn names_fold_case_from_the_storage_root() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("changes.log");
    let example = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/media-provider.toml"),
    )
    .unwrap();
    let conf_text: String = example
        .lines()
        .map(|l| {
            if l.starts_with("change_log") {
                format!("change_log = \"{}\"\n", log.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let conf = dir.path().join("media.toml");
    fs::write(&conf, conf_text).unwrap();
    let m = Mount::with_source(
        |s| {
            fill(s);
            let b = s.join("DCIM/Camera/Img_B.jpg");
            fs::write(&b, sample_jpeg_with_gps(40, 9)).unwrap();
            chown(&b, Some(CAMERA), Some(CAMERA)).unwrap();
        },
        &[
            "--media-provider",
            conf.to_str().unwrap(),
            "-o",
            "allow_other",
        ],
    );
    let stored = m.s("DCIM/Camera/Img_B.jpg");
    for spelling in [
        "DCIM/camera/img_b.jpg",
        "dcim/Camera/IMG_B.jpg",
        "dcim/camera/img_b.JPG",
        "Dcim/CAMERA/Img_B.jpg",
    ] {
        let (ok, out) = sh_as(
            CAMERA,
            CAMERA,
            &format!("cmp {}/{spelling} {}", m.mnt.display(), stored.display()),
        );
        assert!(ok, "{spelling}: {out}");
    }
    // A create through folded names lands in DCIM/Camera as given.
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!("echo c > {}/dcim/camera/New_C.jpg", m.mnt.display()),
    );
    assert!(ok, "{out}");
    assert_eq!(fs::read(m.s("DCIM/Camera/New_C.jpg")).unwrap(), b"c\n");
    assert!(!m.s("dcim").exists() && !m.s("DCIM/camera").exists());
    let names: Vec<String> = fs::read_dir(m.s("DCIM/Camera"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"New_C.jpg".to_string()), "{names:?}");
    // Rename and delete through folded names act on the stored ones.
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!(
            "mv {0}/dcim/camera/new_c.JPG {0}/DCIM/Camera/Moved.jpg && rm {0}/DCIM/CAMERA/moved.JPG",
            m.mnt.display()
        ),
    );
    assert!(ok, "{out}");
    assert!(!m.s("DCIM/Camera/New_C.jpg").exists() && !m.s("DCIM/Camera/Moved.jpg").exists());
    // Policing follows the stored names: another app's photo stays hidden
    // from notes (no read_media) whatever the spelling, and so does
    // another package's app dir.
    let (ok, _) = sh_as(
        NOTES,
        NOTES,
        &format!("cat {}/dcim/camera/IMG_B.JPG", m.mnt.display()),
    );
    assert!(!ok, "notes must not see the camera's photo");
    let (ok, _) = sh_as(
        NOTES,
        NOTES,
        &format!(
            "cat {}/android/DATA/com.example.camera/state",
            m.mnt.display()
        ),
    );
    assert!(!ok, "notes must not reach the camera's app dir");
    let (ok, out) = sh_as(
        NOTES,
        NOTES,
        &format!(
            "cat {}/ANDROID/data/com.example.notes/state",
            m.mnt.display()
        ),
    );
    assert!(ok && out == "com.example.notes", "{out}");
    assert!(m.unmount().success());
}

#[test]
fn changes_are_logged() {
    require_root!();
    let (m, log) = media_mount();
    let cam = m.m("DCIM/Camera");
    let (ok, out) = sh_as(
        CAMERA,
        CAMERA,
        &format!("echo 1 > {0}/x.jpg && mv {0}/x.jpg {0}/y.jpg && rm {0}/y.jpg && mkdir {0}/sub && rmdir {0}/sub", cam.display()),
    );
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("create", "DCIM/Camera/x.jpg"),
        ("rename", "DCIM/Camera/x.jpg"),
        ("delete", "DCIM/Camera/y.jpg"),
        ("create", "DCIM/Camera/sub"),
        ("delete", "DCIM/Camera/sub"),
    ];
    assert_eq!(
        events,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    assert_eq!(lines[1]["to"], "DCIM/Camera/y.jpg");
    assert!(lines.iter().all(|v| v["uid"] == CAMERA));
    assert!(m.unmount().success());
}

/// The rules follow a rename made through the mount: a directory moved
/// into a media dir takes its files with it (their paths come from the
/// inode table's parent links, moved by the rename, not from the host).
#[test]
fn rules_follow_renames_through_the_mount() {
    require_root!();
    let (m, log) = media_mount();
    let sample = m.dir.path().join("sample.jpg");
    let original = sample_jpeg_with_gps(48, 11);
    fs::write(&sample, &original).unwrap();
    fs::set_permissions(&sample, fs::Permissions::from_mode(0o644)).unwrap();
    let mut expected = original.clone();
    redact(&mut expected, 0, &exif_gps_ranges(&original));
    let out = m.dir.path().join("copies");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let read_as = |uid: u32, p: &str, to: &str| {
        let (ok, o) = sh_as(
            uid,
            uid,
            &format!("cat {} > {}/{to}", m.m(p).display(), out.display()),
        );
        assert!(ok, "{o}");
        fs::read(out.join(to)).unwrap()
    };
    let (ok, o) = sh_as(
        GALLERY,
        GALLERY,
        &format!(
            "mkdir {0}/shared/album && cp {1} {0}/shared/album/p.jpg && cp {1} {0}/shared/q.jpg",
            m.mnt.display(),
            sample.display()
        ),
    );
    assert!(ok, "{o}");
    // Outside the media dirs: intact, and visible to every app.
    assert_eq!(read_as(GALLERY, "shared/album/p.jpg", "1.jpg"), original);
    assert_eq!(ls(NOTES, &m.m("shared/album")), vec!["p.jpg"]);
    let (ok, o) = sh_as(
        GALLERY,
        GALLERY,
        &format!(
            "mv {0}/shared/album {0}/Pictures/album && mv {0}/shared/q.jpg {0}/DCIM/Camera/q.jpg",
            m.mnt.display()
        ),
    );
    assert!(ok, "{o}");
    // Now in Pictures (the directory moved) and DCIM (the file moved).
    assert_eq!(read_as(GALLERY, "Pictures/album/p.jpg", "2.jpg"), expected);
    assert_eq!(read_as(GALLERY, "DCIM/Camera/q.jpg", "3.jpg"), expected);
    assert_eq!(read_as(CAMERA, "Pictures/album/p.jpg", "4.jpg"), original);
    assert!(
        ls(NOTES, &m.m("Pictures/album")).is_empty(),
        "not its media"
    );
    assert_eq!(ls(GALLERY, &m.m("Pictures/album")), vec!["p.jpg"]);
    // With inode passthrough (the patched kernel) the kernel keeps each
    // inode's mask for its life: a rename that would change it is EXDEV,
    // and mv copied. Without it, the rename happened.
    let inode_mode = m.stats()["backing"]["mode"] == "inode";
    let text = fs::read_to_string(&log).unwrap();
    let renamed = text.lines().any(|l| {
        l.contains("\"path\":\"shared/album\"") && l.contains("\"to\":\"Pictures/album\"")
    });
    assert_eq!(
        renamed, !inode_mode,
        "inode passthrough {inode_mode}: {text}"
    );
    let (ok, o) = sh_as(
        GALLERY,
        GALLERY,
        &format!("cp {1} {0}/shared/r.jpg", m.mnt.display(), sample.display()),
    );
    assert!(ok, "{o}");
    let (from, to) = (m.m("shared/r.jpg"), m.m("DCIM/Camera/r.jpg"));
    let r = thread_as(GALLERY, GALLERY, move || {
        fs::rename(&from, &to).map_err(|e| e.raw_os_error())
    })
    .join()
    .unwrap();
    if inode_mode {
        assert_eq!(r, Err(Some(libc::EXDEV)), "a rename into the media dirs");
    } else {
        assert_eq!(r, Ok(()), "a rename into the media dirs");
        assert_eq!(read_as(GALLERY, "DCIM/Camera/r.jpg", "5.jpg"), expected);
    }
    assert!(m.unmount().success());
}
