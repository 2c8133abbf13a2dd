//! Image recipes (`images/NAME.yaml`) and resolving what `--image` names.
//!
//! A recipe says what an image is (name, distro, release, flavor, arch), where its disk comes
//! from (one `source`), what to add to it (`packages`, `provision` scripts run in the booted
//! build instance), its disk size and how it boots. Paths in a recipe are relative to the
//! directory above the recipe's own directory (the repository root for `images/NAME.yaml`).
//! Every mistake is one error naming the file and the field.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use super::{BaseImage, ImageError, newest};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub name: String,
    pub distro: String,
    pub release: String,
    pub flavor: String,
    pub arch: String,
    pub source: Source,
    /// Added with the distro's package manager: in the debootstrap chroot for `debootstrap`
    /// sources, in the booted build instance otherwise.
    pub packages: Vec<String>,
    /// Scripts (paths relative to the recipe root) run in order, as root, in the build
    /// instance.
    pub provision: Vec<String>,
    /// Disk size in bytes: the root file system of a debootstrap image, the virtual size a
    /// file/URL image is grown to.
    pub disk_size: Option<u64>,
    pub boot: Boot,
    /// Who ferrotron logs in as.
    pub user: String,
    /// The recipe file.
    pub path: PathBuf,
}

/// Where the image's disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A script run as `bash SCRIPT OUTDIR ARGS…` that writes
    /// `YYMMDD_HHMM-KEY.{qcow2,json[,vmlinux,initrd]}` into OUTDIR.
    Script { script: String, args: Vec<String> },
    /// A disk image on this host (qcow2 or raw), optionally checked against its sha256.
    File {
        path: String,
        sha256: Option<String>,
    },
    /// A disk image to download, checked against its sha256 (resumable, cached by checksum).
    Url { url: String, sha256: String },
    /// A Debian tree made with debootstrap from Debian's packages (provisioning/build-debian.sh).
    Debootstrap {
        suite: String,
        variant: String,
        mirror: Option<String>,
        packages: Vec<String>,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Script { .. } => "script",
            Source::File { .. } => "file",
            Source::Url { .. } => "url",
            Source::Debootstrap { .. } => "debootstrap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// qemu loads the kernel and initrd itself (fast under TCG).
    Direct,
    /// The image boots with its own bootloader (stock cloud images).
    Bootloader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub mode: BootMode,
    /// Kernel and initrd files for direct boot of a file/URL source (script and debootstrap
    /// sources bring their own).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub timeout_s: u64,
}

/// The recipe as written; checked and turned into [`Recipe`] by [`Recipe::load`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    distro: String,
    #[serde(deserialize_with = "string_or_number")]
    release: String,
    flavor: String,
    arch: String,
    source: RawSource,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    provision: Vec<String>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    disk_size: Option<String>,
    #[serde(default)]
    boot: RawBoot,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    script: Option<String>,
    args: Option<Vec<String>>,
    file: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
    debootstrap: Option<RawDebootstrap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebootstrap {
    suite: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    mirror: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    mode: Option<BootMode>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    memory_mib: Option<u32>,
    vcpus: Option<u32>,
    timeout_s: Option<u64>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(u64),
        Float(f64),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::Text(s) => s,
        Scalar::Int(u) => u.to_string(),
        Scalar::Float(f) => f.to_string(),
    })
}

fn opt_string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// Parses `4G`, `512M`, `10GiB`, `1073741824` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            context: format!("reading recipe {}", path.display()),
            source,
        })?;
        Recipe::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Recipe, ImageError> {
        let bad = |reason: String| ImageError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawRecipe = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (field, v) in [
            ("distro", &raw.distro),
            ("release", &raw.release),
            ("flavor", &raw.flavor),
            ("arch", &raw.arch),
        ] {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._".contains(c))
            {
                return Err(bad(format!(
                    "{field}: `{v}` must be non-empty letters, digits, `.` or `_` (it is part of \
                     the image file name DISTRO-RELEASE-FLAVOR-ARCH)"
                )));
            }
        }
        if raw.name.is_empty() || raw.name.contains(['/', ' ']) {
            return Err(bad(format!(
                "name: `{}` must be a word without `/`",
                raw.name
            )));
        }

        let s = raw.source;
        let given: Vec<&str> = [
            ("script", s.script.is_some()),
            ("file", s.file.is_some()),
            ("url", s.url.is_some()),
            ("debootstrap", s.debootstrap.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if given.len() != 1 {
            return Err(bad(format!(
                "source: give exactly one of `script`, `file`, `url`, `debootstrap` (found {})",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            )));
        }
        if s.args.is_some() && s.script.is_none() {
            return Err(bad("source.args: only a `script` source takes args".into()));
        }
        if let Some(h) = &s.sha256 {
            if s.file.is_none() && s.url.is_none() {
                return Err(bad(
                    "source.sha256: only `file` and `url` sources take a sha256".into(),
                ));
            }
            if !is_sha256(h) {
                return Err(bad(format!(
                    "source.sha256: `{h}` is not a sha256 (64 hexadecimal digits)"
                )));
            }
        }
        let source = if let Some(script) = s.script {
            Source::Script {
                script,
                args: s.args.unwrap_or_default(),
            }
        } else if let Some(file) = s.file {
            Source::File {
                path: file,
                sha256: s.sha256.map(|h| h.to_ascii_lowercase()),
            }
        } else if let Some(url) = s.url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(bad(format!("source.url: `{url}` is not an http(s) URL")));
            }
            let Some(sha256) = s.sha256 else {
                return Err(bad(
                    "source.sha256: a `url` source needs the image's sha256 (from the \
                     publisher's CHECKSUM file)"
                        .into(),
                ));
            };
            Source::Url {
                url,
                sha256: sha256.to_ascii_lowercase(),
            }
        } else {
            let d = s.debootstrap.expect("one source kind is set");
            if raw.arch != "x86_64" {
                return Err(bad(format!(
                    "arch: debootstrap sources build x86_64 images only (not `{}`)",
                    raw.arch
                )));
            }
            let word = |w: &str| !w.is_empty() && !w.contains([' ', ',', '/']);
            if !word(&d.suite) {
                return Err(bad(format!(
                    "source.debootstrap.suite: `{}` is not a suite",
                    d.suite
                )));
            }
            let variant = d.variant.unwrap_or_else(|| "minbase".into());
            if !["minbase", "buildd", "fakechroot", "-"].contains(&variant.as_str()) {
                return Err(bad(format!(
                    "source.debootstrap.variant: `{variant}` is not one of minbase, buildd, \
                     fakechroot, -"
                )));
            }
            if let Some(p) = d.packages.iter().find(|p| !word(p)) {
                return Err(bad(format!(
                    "source.debootstrap.packages: `{p}` is not a package name"
                )));
            }
            Source::Debootstrap {
                suite: d.suite,
                variant,
                mirror: d.mirror,
                packages: d.packages,
            }
        };
        if let Some(p) = raw
            .packages
            .iter()
            .find(|p| p.is_empty() || p.contains([' ', ',', '\'', '"', ';', '$']))
        {
            return Err(bad(format!("packages: `{p}` is not a package name")));
        }
        if let Some(p) = raw.provision.iter().find(|p| p.is_empty()) {
            return Err(bad(format!("provision: `{p}` is not a script path")));
        }
        let disk_size = match raw.disk_size {
            None => None,
            Some(s) => Some(parse_size(&s).ok_or_else(|| {
                bad(format!(
                    "disk_size: `{s}` is not a size (write e.g. 4G, 512M or a byte count)"
                ))
            })?),
        };
        if disk_size.is_some() && matches!(source, Source::Script { .. }) {
            return Err(bad(
                "disk_size: a `script` source decides its own disk size; drop disk_size".into(),
            ));
        }

        let b = raw.boot;
        let brings_kernel = matches!(source, Source::Script { .. } | Source::Debootstrap { .. });
        let mode = b.mode.unwrap_or(if brings_kernel || b.kernel.is_some() {
            BootMode::Direct
        } else {
            BootMode::Bootloader
        });
        match (mode, &source) {
            (BootMode::Bootloader, Source::Debootstrap { .. }) => {
                return Err(bad(
                    "boot.mode: debootstrap images have no bootloader; use `direct`".into(),
                ));
            }
            (BootMode::Direct, Source::File { .. } | Source::Url { .. }) if b.kernel.is_none() => {
                return Err(bad(format!(
                    "boot.kernel: direct boot of a `{}` source needs the kernel file (and \
                     usually boot.initrd), or use boot.mode: bootloader",
                    source.kind()
                )));
            }
            (BootMode::Bootloader, _) if b.kernel.is_some() || b.initrd.is_some() => {
                return Err(bad(
                    "boot.kernel: only direct boot takes a kernel and initrd".into(),
                ));
            }
            (_, Source::Script { .. } | Source::Debootstrap { .. })
                if b.kernel.is_some() || b.initrd.is_some() =>
            {
                return Err(bad(format!(
                    "boot.kernel: a `{}` source brings its own kernel and initrd",
                    source.kind()
                )));
            }
            _ => {}
        }
        let boot = Boot {
            mode,
            kernel: b.kernel,
            initrd: b.initrd,
            cmdline: b.cmdline,
            memory_mib: b.memory_mib.unwrap_or(1024),
            vcpus: b.vcpus.unwrap_or(1),
            timeout_s: b.timeout_s.unwrap_or(300),
        };
        if boot.memory_mib < 128 || boot.vcpus == 0 || boot.timeout_s < 5 {
            return Err(bad(
                "boot: memory_mib must be at least 128, vcpus at least 1, timeout_s at least 5"
                    .into(),
            ));
        }
        let user = raw.user.unwrap_or_else(|| "root".into());
        if user.is_empty()
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            return Err(bad(format!("user: `{user}` is not a user name")));
        }
        Ok(Recipe {
            name: raw.name,
            distro: raw.distro,
            release: raw.release,
            flavor: raw.flavor,
            arch: raw.arch,
            source,
            packages: raw.packages,
            provision: raw.provision,
            disk_size,
            boot,
            user,
            path: path.to_path_buf(),
        })
    }

    /// DISTRO-RELEASE-FLAVOR-ARCH: what the image file names carry.
    pub fn key(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.distro, self.release, self.flavor, self.arch
        )
    }

    /// The directory recipe paths are relative to: the one above the recipe's directory.
    pub fn root(&self) -> PathBuf {
        let abs = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        abs.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// A path the recipe names, made absolute against [`Recipe::root`].
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root().join(p)
        }
    }

    /// Checks that every local file the recipe names exists, before anything is built.
    pub fn check_files(&self) -> Result<(), ImageError> {
        let mut files: Vec<(&str, &str)> = Vec::new();
        match &self.source {
            Source::Script { script, .. } => files.push(("source.script", script)),
            Source::File { path, .. } => files.push(("source.file", path)),
            Source::Debootstrap { .. } | Source::Url { .. } => {}
        }
        for p in &self.provision {
            files.push(("provision", p));
        }
        if let Some(k) = &self.boot.kernel {
            files.push(("boot.kernel", k));
        }
        if let Some(i) = &self.boot.initrd {
            files.push(("boot.initrd", i));
        }
        for (field, p) in files {
            let full = self.resolve_path(p);
            if !full.is_file() {
                return Err(ImageError::Invalid {
                    path: self.path.clone(),
                    reason: format!("{field}: {} does not exist", full.display()),
                });
            }
        }
        Ok(())
    }

    /// Whether `resolve` may build this recipe on first use: only a script source with
    /// nothing to do in a booted instance (the old, quick path; `ferrotron image build` is
    /// the full pipeline).
    pub fn quick_buildable(&self) -> bool {
        matches!(self.source, Source::Script { .. })
            && self.packages.is_empty()
            && self.provision.is_empty()
    }

    /// Runs the recipe's build script into `out_dir` and returns the image it produced, as
    /// the script left it (no boot, no provisioning). The script's progress goes to our
    /// stderr, where a person waiting can see it.
    pub fn build(&self, out_dir: &Path) -> Result<PathBuf, ImageError> {
        let Source::Script { script, args } = &self.source else {
            return Err(ImageError::Build(format!(
                "image `{}` has a {} source; build it with `ferrotron image build {}`",
                self.name,
                self.source.kind(),
                self.path.display()
            )));
        };
        let script = self.resolve_path(script);
        std::fs::create_dir_all(out_dir).map_err(|source| ImageError::Io {
            context: format!("creating {}", out_dir.display()),
            source,
        })?;
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(out_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| ImageError::Io {
                context: format!("running {}", script.display()),
                source,
            })?;
        if !status.success() {
            return Err(ImageError::Build(format!(
                "building image `{}` with {} failed ({status})",
                self.name,
                script.display()
            )));
        }
        newest(out_dir, &self.key()).ok_or_else(|| {
            ImageError::Build(format!(
                "{} succeeded but left no {}-*.qcow2 in {}",
                script.display(),
                self.key(),
                out_dir.display()
            ))
        })
    }
}

/// Finds a recipe by file path or by name in `recipes_dir`.
pub fn find(spec: &str, recipes_dir: &Path) -> Result<Recipe, ImageError> {
    let as_path = Path::new(spec);
    if as_path.is_file() {
        return Recipe::load(as_path);
    }
    if spec.contains('/') || spec.ends_with(".yaml") {
        return Err(ImageError::NotFound(format!("no recipe file {spec}")));
    }
    let named = recipes_dir.join(format!("{spec}.yaml"));
    if named.is_file() {
        return Recipe::load(&named);
    }
    Err(ImageError::NotFound(format!(
        "no recipe `{spec}`: no {} (give a recipe file or a name from {})",
        named.display(),
        recipes_dir.display()
    )))
}

/// Every recipe in `recipes_dir` that loads, with the errors of those that do not.
pub fn all(recipes_dir: &Path) -> (Vec<Recipe>, Vec<ImageError>) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(recipes_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for p in paths {
        match Recipe::load(&p) {
            Ok(r) => ok.push(r),
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

/// Finds the base image `spec` names: an image file, a recipe name in `recipes_dir` (its
/// newest build in `images_dir`, built first when there is none, `build` allows and the
/// recipe is a plain script), or DISTRO-RELEASE-FLAVOR[-ARCH] (newest build, `x86_64` when
/// no arch is given).
pub fn resolve(
    spec: &str,
    recipes_dir: &Path,
    images_dir: &Path,
    build: bool,
) -> Result<BaseImage, ImageError> {
    let as_path = Path::new(spec);
    if as_path.is_file() {
        return BaseImage::open(as_path);
    }
    let recipe_path = recipes_dir.join(format!("{spec}.yaml"));
    if !spec.contains('/') && recipe_path.is_file() {
        let recipe = Recipe::load(&recipe_path)?;
        let path = match newest(images_dir, &recipe.key()) {
            Some(p) => p,
            None if build && recipe.quick_buildable() => recipe.build(images_dir)?,
            None => {
                return Err(ImageError::NotFound(format!(
                    "no build of image `{spec}` ({}) in {}; build it with `ferrotron image \
                     build {}`",
                    recipe.key(),
                    images_dir.display(),
                    recipe_path.display()
                )));
            }
        };
        return BaseImage::open(&path);
    }
    let key = match spec.split('-').count() {
        3 => format!("{spec}-x86_64"),
        4 => spec.to_string(),
        _ => {
            return Err(ImageError::NotFound(format!(
                "`{spec}` is not an image file, a recipe in {} or DISTRO-RELEASE-FLAVOR[-ARCH]",
                recipes_dir.display()
            )));
        }
    };
    match newest(images_dir, &key) {
        Some(p) => BaseImage::open(&p),
        None => Err(ImageError::NotFound(format!(
            "no image {key} in {} (files are named YYMMDD_HHMM-{key}.qcow2)",
            images_dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "name: x\ndistro: d\nrelease: \"1\"\nflavor: f\narch: x86_64\n";

    fn parse(body: &str) -> Result<Recipe, String> {
        Recipe::parse(Path::new("images/x.yaml"), &format!("{HEAD}{body}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn resolves_files_recipes_and_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let recipes = tmp.path().join("images");
        let built = tmp.path().join("built");
        std::fs::create_dir_all(&recipes).unwrap();
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(
            recipes.join("tiny.yaml"),
            "name: tiny\ndistro: tiny\nrelease: \"1\"\nflavor: base\narch: x86_64\nsource: {script: build.sh}\n",
        )
        .unwrap();
        // The recipe's script "builds" by touching an image file.
        std::fs::write(
            tmp.path().join("build.sh"),
            "touch \"$1/260101_0000-tiny-1-base-x86_64.qcow2\"\n",
        )
        .unwrap();

        let err = resolve("tiny", &recipes, &built, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ferrotron image build"), "{err}");
        let img = resolve("tiny", &recipes, &built, true).unwrap();
        assert_eq!(img.name.unwrap().key(), "tiny-1-base-x86_64");
        assert!(resolve("tiny-1-base", &recipes, &built, false).is_ok());
        assert!(resolve(img.path.to_str().unwrap(), &recipes, &built, false).is_ok());
        let err = resolve("nope", &recipes, &built, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DISTRO-RELEASE-FLAVOR"), "{err}");
        assert!(resolve("fedora-43-cloud", &recipes, &built, false).is_err());

        // A recipe that needs the full pipeline is not built behind a run's back.
        std::fs::write(
            recipes.join("deb.yaml"),
            "name: deb\ndistro: deb\nrelease: \"1\"\nflavor: f\narch: x86_64\nsource: {debootstrap: {suite: bookworm}}\n",
        )
        .unwrap();
        let err = resolve("deb", &recipes, &built, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ferrotron image build"), "{err}");
        assert_eq!(find("deb", &recipes).unwrap().name, "deb");
        assert!(find("nope", &recipes).is_err());
    }

    #[test]
    fn every_source_kind_parses() {
        let r = parse("source: {script: s.sh, args: [--x]}\n").unwrap();
        assert_eq!(r.boot.mode, BootMode::Direct);
        assert!(r.quick_buildable());
        let r = parse(&format!(
            "source: {{url: 'https://e.org/a.qcow2', sha256: {}}}\ndisk_size: 10G\npackages: [python3]\nprovision: [provisioning/guest/x.sh]\n",
            "A".repeat(64)
        ))
        .unwrap();
        assert_eq!(r.boot.mode, BootMode::Bootloader);
        assert_eq!(r.disk_size, Some(10 << 30));
        assert!(matches!(&r.source, Source::Url { sha256, .. } if sha256 == &"a".repeat(64)));
        assert!(!r.quick_buildable());
        let r =
            parse("source: {debootstrap: {suite: bookworm, packages: [python3]}}\nrelease: 12\n");
        // `release` twice is a YAML error, reported as such.
        assert!(r.is_err());
        let r = Recipe::parse(
            Path::new("images/x.yaml"),
            "name: x\ndistro: d\nrelease: 12\nflavor: f\narch: x86_64\nsource: {debootstrap: {suite: bookworm}}\n",
        )
        .unwrap();
        assert_eq!(r.release, "12");
        assert!(matches!(&r.source, Source::Debootstrap { variant, .. } if variant == "minbase"));
        let r = parse("source: {file: disk.qcow2}\nboot: {kernel: k, initrd: i, cmdline: c}\n")
            .unwrap();
        assert_eq!(r.boot.mode, BootMode::Direct);
        assert_eq!(r.root(), std::path::absolute(".").unwrap());
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_size("0"), None);
    }

    #[test]
    fn mistakes_name_the_file_and_the_field() {
        let cases = [
            ("source: {script: s}\nextra: 1\n", "unknown field `extra`"),
            ("source: {}\n", "source: give exactly one"),
            ("source: {file: a, url: 'https://b'}\n", "found file, url"),
            (
                "source: {url: 'https://e.org/a'}\n",
                "source.sha256: a `url` source needs",
            ),
            (
                "source: {url: 'ftp://e.org/a', sha256: x}\n",
                "source.sha256: `x` is not a sha256",
            ),
            ("source: {script: s, sha256: x}\n", "source.sha256: only"),
            ("source: {file: a, args: [x]}\n", "source.args"),
            ("source: {file: a}\ndisk_size: lots\n", "disk_size: `lots`"),
            (
                "source: {script: s}\ndisk_size: 4G\n",
                "disk_size: a `script` source",
            ),
            (
                "source: {file: a}\nboot: {mode: direct}\n",
                "boot.kernel: direct boot",
            ),
            (
                "source: {debootstrap: {suite: bookworm}}\nboot: {mode: bootloader}\n",
                "boot.mode",
            ),
            (
                "source: {debootstrap: {suite: bookworm, variant: big}}\n",
                "source.debootstrap.variant",
            ),
            (
                "source: {debootstrap: {suite: bookworm, packages: ['a b']}}\n",
                "source.debootstrap.packages",
            ),
            ("source: {file: a}\npackages: ['x;y']\n", "packages: `x;y`"),
            (
                "source: {file: a}\nboot: {mode: fast}\n",
                "unknown variant `fast`",
            ),
            ("source: {file: a}\nuser: 'a b'\n", "user:"),
            ("source: {file: a}\nboot: {vcpus: 0}\n", "boot: memory_mib"),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with("images/x.yaml: "), "{e}");
            assert!(e.contains(want), "{body:?}: want {want:?} in {e}");
        }
        let e = Recipe::parse(
            Path::new("bad.yaml"),
            "name: x\ndistro: my-distro\nrelease: \"1\"\nflavor: f\narch: x86_64\nsource: {script: s}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.yaml") && e.contains("distro"), "{e}");
        let e = Recipe::parse(
            Path::new("a.yaml"),
            "name: x\ndistro: d\nrelease: \"1\"\nflavor: f\narch: arm64\nsource: {debootstrap: {suite: s}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("arch: debootstrap"), "{e}");
    }

    #[test]
    fn missing_files_are_found_before_building() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("images")).unwrap();
        let p = tmp.path().join("images/x.yaml");
        std::fs::write(
            &p,
            format!(
                "{HEAD}source: {{file: disk.qcow2}}\nprovision: [provisioning/guest/nope.sh]\n"
            ),
        )
        .unwrap();
        std::fs::write(tmp.path().join("disk.qcow2"), b"").unwrap();
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.root(), tmp.path());
        let e = r.check_files().unwrap_err().to_string();
        assert!(
            e.contains("x.yaml: provision:") && e.contains("nope.sh"),
            "{e}"
        );
    }

    #[test]
    fn shipped_recipes_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
        let (ok, errs) = all(&dir);
        assert!(errs.is_empty(), "{errs:?}");
        let names: Vec<&str> = ok.iter().map(|r| r.name.as_str()).collect();
        for want in [
            "tiny",
            "debian",
            "debian-cloudinit",
            "debian-12",
            "fedora-cloud",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        for r in &ok {
            r.check_files().unwrap();
        }
    }
}
