//! The base image file format: `YYMMDD_HHMM-DISTRO-RELEASE-FLAVOR-ARCH.qcow2` (Taskotron's
//! convention; the newest build of a DISTRO-RELEASE-FLAVOR-ARCH wins), optionally with
//! sidecars sharing its stem: `.json` (how to boot it, and how it was built), `.vmlinux` and
//! `.initrd` (direct kernel boot), `.log` (its build log).
//!
//! A leaf: the providers that boot images and the image pipeline that makes them both read
//! it, and it names neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The build itself failed: a script, a checksum, a provisioning step.
    #[error("{0}")]
    Build(String),
    /// Something under the build failed: the provider, a connection, a missing tool.
    #[error("{0}")]
    Infra(String),
    #[error("interrupted")]
    Cancelled,
    #[error("the build exceeded its timeout of {}s", .0.as_secs())]
    TimedOut(std::time::Duration),
}

/// The parts of a base image's file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageName {
    /// `YYMMDD_HHMM`: sorts by build time.
    pub stamp: String,
    pub distro: String,
    pub release: String,
    pub flavor: String,
    pub arch: String,
}

impl ImageName {
    /// Parses `YYMMDD_HHMM-DISTRO-RELEASE-FLAVOR-ARCH.(qcow2|raw|img)`.
    pub fn parse(file_name: &str) -> Option<ImageName> {
        let stem = ["qcow2", "raw", "img"]
            .iter()
            .find_map(|ext| file_name.strip_suffix(&format!(".{ext}")))?;
        let mut parts = stem.split('-');
        let stamp = parts.next()?;
        let valid_stamp = stamp.len() == 11
            && stamp.as_bytes()[6] == b'_'
            && stamp
                .chars()
                .enumerate()
                .all(|(i, c)| i == 6 || c.is_ascii_digit());
        let rest: Vec<&str> = parts.collect();
        if !valid_stamp || rest.len() != 4 || rest.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(ImageName {
            stamp: stamp.to_string(),
            distro: rest[0].to_string(),
            release: rest[1].to_string(),
            flavor: rest[2].to_string(),
            arch: rest[3].to_string(),
        })
    }

    pub fn key(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.distro, self.release, self.flavor, self.arch
        )
    }

    /// `YYMMDD_HHMM-DISTRO-RELEASE-FLAVOR-ARCH`: the file name without its extension.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.stamp, self.key())
    }

    /// The build time the stamp records (UTC).
    pub fn built_at(&self) -> Option<time::OffsetDateTime> {
        let n = |r: std::ops::Range<usize>| self.stamp.get(r)?.parse::<u8>().ok();
        let date = time::Date::from_calendar_date(
            2000 + i32::from(n(0..2)?),
            time::Month::try_from(n(2..4)?).ok()?,
            n(4..6)?,
        )
        .ok()?;
        let t = time::Time::from_hms(n(7..9)?, n(9..11)?, 0).ok()?;
        Some(time::PrimitiveDateTime::new(date, t).assume_utc())
    }
}

/// The stamp for a build started at `t`: `YYMMDD_HHMM`, UTC.
pub fn stamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:02}{:02}{:02}_{:02}{:02}",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// The files that belong to one image besides the disk, by extension.
pub const SIDECARS: [&str; 4] = ["json", "vmlinux", "initrd", "log"];

/// How to boot an image, from its `.json` sidecar. Every field is optional so that a stock
/// cloud image without a sidecar boots with its own bootloader and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootInfo {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub user: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub boot_timeout_s: u64,
}

/// A base image ready to be cloned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub path: PathBuf,
    pub name: Option<ImageName>,
    pub boot: BootInfo,
}

impl BaseImage {
    /// Reads `path` and its sidecar (when present).
    pub fn open(path: &Path) -> Result<BaseImage, ImageError> {
        if !path.is_file() {
            return Err(ImageError::NotFound(format!(
                "image file {} does not exist",
                path.display()
            )));
        }
        // Not canonicalised: the sidecar is looked up beside the path as given, so a
        // directory of symlinks can boot one base image in another way.
        let path = std::path::absolute(path).map_err(|source| ImageError::Io {
            context: format!("resolving {}", path.display()),
            source,
        })?;
        let sidecar = path.with_extension("json");
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let boot = if sidecar.is_file() {
            read_sidecar(&sidecar)?
        } else {
            default_boot()
        };
        Ok(BaseImage {
            name: ImageName::parse(file_name),
            path,
            boot,
        })
    }

    /// A short name for logs and metadata: the file name.
    pub fn label(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// How a base image was made, as its sidecar says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub recipe: String,
    pub recipe_sha256: String,
}

/// The recipe of the image file at `path`, if it has a sidecar that names one.
pub fn provenance(path: &Path) -> Option<Provenance> {
    if !path.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(path.with_extension("json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let made = Provenance {
        recipe: field("recipe"),
        recipe_sha256: field("recipe_sha256"),
    };
    (!made.recipe.is_empty()).then_some(made)
}

/// The sidecar is written by shell scripts, so numbers may arrive as strings.
#[derive(Deserialize)]
struct Sidecar {
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    user: Option<String>,
    #[serde(default, flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

fn read_sidecar(path: &Path) -> Result<BootInfo, ImageError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse_sidecar(&text, path, |name| {
        let p = dir.join(name);
        p.is_file().then_some(p)
    })
}

/// A sidecar's boot settings from its text. `locate` finds the files it names (kernel,
/// initrd) beside the image, wherever the image lives (a directory here, a storage pool on
/// another host); `origin` names the sidecar in errors.
pub fn parse_sidecar(
    text: &str,
    origin: &Path,
    locate: impl Fn(&str) -> Option<PathBuf>,
) -> Result<BootInfo, ImageError> {
    let s: Sidecar = serde_json::from_str(text).map_err(|e| ImageError::Invalid {
        path: origin.to_path_buf(),
        reason: e.to_string(),
    })?;
    let file = |name: Option<String>| -> Result<Option<PathBuf>, ImageError> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        match locate(&name) {
            Some(p) => Ok(Some(p)),
            None => Err(ImageError::Invalid {
                path: origin.to_path_buf(),
                reason: format!("names {name}, which is not beside it"),
            }),
        }
    };
    let number = |key: &str, default: u64| -> u64 {
        match s.rest.get(key) {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(default),
            Some(serde_json::Value::String(v)) => v.parse().unwrap_or(default),
            _ => default,
        }
    };
    Ok(BootInfo {
        kernel: file(s.kernel)?,
        initrd: file(s.initrd)?,
        cmdline: s.cmdline,
        user: s.user.unwrap_or_else(|| "root".into()),
        memory_mib: u32::try_from(number("memory_mib", 512)).unwrap_or(512),
        vcpus: u32::try_from(number("vcpus", 1)).unwrap_or(1).max(1),
        boot_timeout_s: number("timeout_s", 120).max(5),
    })
}

/// The boot settings of an image without a sidecar.
pub fn default_boot() -> BootInfo {
    BootInfo {
        user: "root".into(),
        memory_mib: 1024,
        vcpus: 1,
        boot_timeout_s: 300,
        ..Default::default()
    }
}

/// The newest image in `dir` whose name matches `key` (DISTRO-RELEASE-FLAVOR-ARCH).
pub fn newest(dir: &Path, key: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_string();
            let name = ImageName::parse(&file)?;
            (name.key() == key).then(|| (name.stamp, e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

/// Every base image in `dir`, newest first.
pub fn list(dir: &Path) -> Vec<(ImageName, PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = ImageName::parse(e.file_name().to_str()?)?;
            Some((name, e.path()))
        })
        .collect();
    out.sort_by(|a, b| b.0.stamp.cmp(&a.0.stamp).then(a.0.key().cmp(&b.0.key())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_newest_wins() {
        let n = ImageName::parse("260301_1030-fedora-43-cloud-x86_64.qcow2").unwrap();
        assert_eq!(n.key(), "fedora-43-cloud-x86_64");
        assert_eq!(n.stamp, "260301_1030");
        for bad in [
            "fedora-43-cloud-x86_64.qcow2",
            "260301_1030-fedora-43-x86_64.qcow2",
            "2603011030x-fedora-43-cloud-x86_64.qcow2",
            "260301_1030-fedora-43-cloud-x86_64.vmdk",
            "260301_1030-fedora--cloud-x86_64.qcow2",
        ] {
            assert!(ImageName::parse(bad).is_none(), "{bad}");
        }

        let dir = tempfile::tempdir().unwrap();
        for f in [
            "260301_1030-tiny-1-base-x86_64.qcow2",
            "261101_0900-tiny-1-base-x86_64.qcow2",
            "261201_0900-tiny-2-base-x86_64.qcow2",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let got = newest(dir.path(), "tiny-1-base-x86_64").unwrap();
        assert!(got.ends_with("261101_0900-tiny-1-base-x86_64.qcow2"));
        assert!(newest(dir.path(), "tiny-3-base-x86_64").is_none());
        assert_eq!(list(dir.path()).len(), 3);
    }

    #[test]
    fn stamps_are_build_times() {
        let t = time::macros::datetime!(2026-11-27 21:05:59 UTC);
        assert_eq!(stamp(t), "261127_2105");
        let n = ImageName::parse("261127_2105-tiny-1-base-x86_64.qcow2").unwrap();
        assert_eq!(
            n.built_at(),
            Some(time::macros::datetime!(2026-11-27 21:05 UTC))
        );
        assert_eq!(n.stem(), "261127_2105-tiny-1-base-x86_64");
        let n = ImageName::parse("261399_2105-tiny-1-base-x86_64.qcow2").unwrap();
        assert_eq!(n.built_at(), None);
    }

    #[test]
    fn sidecars_with_string_numbers_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("260301_1030-tiny-1-base-x86_64.qcow2");
        std::fs::write(&img, b"").unwrap();
        std::fs::write(dir.path().join("k"), b"").unwrap();
        std::fs::write(
            img.with_extension("json"),
            r#"{"kernel":"k","cmdline":"console=ttyS0","memory_mib":"256","timeout_s":"60"}"#,
        )
        .unwrap();
        let b = BaseImage::open(&img).unwrap();
        assert_eq!(b.boot.memory_mib, 256);
        assert_eq!(b.boot.boot_timeout_s, 60);
        assert_eq!(b.boot.user, "root");
        assert!(b.boot.kernel.unwrap().ends_with("k"));

        std::fs::write(img.with_extension("json"), r#"{"kernel":"missing"}"#).unwrap();
        let e = BaseImage::open(&img).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains(".json"), "{e}");
    }
}
