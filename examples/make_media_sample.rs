//! Builds a small sample tree for the media-provider mode:
//!
//!     cargo run --example make_media_sample -- /tmp/media-src
//!
//! DCIM/Camera holds JPEGs with EXIF GPS tags, one per app of
//! examples/media-provider.toml (each owned by that app's uid, as if it had
//! created it through the mount); Android/data has a dir per package.

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use passthroughfs::media::sample_jpeg_with_gps;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/media-src".into());
    let root = Path::new(&root);
    let apps = [
        ("com.example.camera", 10001u32),
        ("com.example.notes", 10002),
        ("com.example.gallery", 10003),
    ];
    for d in [
        "DCIM/Camera",
        "Pictures",
        "Download",
        "Android/data",
        "Android/obb",
    ] {
        std::fs::create_dir_all(root.join(d))?;
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o777))?;
    }
    for (i, (pkg, uid)) in apps.iter().enumerate() {
        let dir = root.join("Android/data").join(pkg);
        std::fs::create_dir_all(&dir)?;
        chown(&dir, Some(*uid), Some(*uid))?;
        let photo = root.join(format!("DCIM/Camera/IMG_{:04}.jpg", i + 1));
        std::fs::write(&photo, sample_jpeg_with_gps(40 + i as u32, 10 + i as u32))?;
        chown(&photo, Some(*uid), Some(*uid))?;
    }
    std::fs::write(root.join("DCIM/Camera/.nomedia"), b"")?;
    std::fs::write(
        root.join("shared.txt"),
        b"outside the media dirs: plain passthrough\n",
    )?;
    println!("sample tree in {}", root.display());
    Ok(())
}
