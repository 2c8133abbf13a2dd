//! Image recipes (`images/NAME.yaml`) and resolving what `--image` names.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use super::{BaseImage, ImageError, newest};

#[derive(Debug, Clone, Deserialize)]
pub struct Recipe {
    pub name: String,
    pub distro: String,
    pub release: String,
    pub flavor: String,
    pub arch: String,
    pub source: Source,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub boot: Option<serde_norway::Value>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    /// A build script, relative to the directory above `images/` (the repository root).
    pub script: String,
    #[serde(default)]
    pub args: Vec<String>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let mut r: Recipe = serde_norway::from_str(&text).map_err(|e| ImageError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (field, v) in [
            ("distro", &r.distro),
            ("release", &r.release),
            ("flavor", &r.flavor),
            ("arch", &r.arch),
        ] {
            if v.is_empty() || v.contains(['-', '/']) {
                return Err(ImageError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("{field} `{v}` must be non-empty, without `-` or `/`"),
                });
            }
        }
        r.path = path.to_path_buf();
        Ok(r)
    }

    /// DISTRO-RELEASE-FLAVOR-ARCH: what the image file names carry.
    pub fn key(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.distro, self.release, self.flavor, self.arch
        )
    }

    /// Runs the recipe's build script into `out_dir` and returns the image it produced.
    /// The script's progress goes to our stderr, where a person waiting can see it.
    pub fn build(&self, out_dir: &Path) -> Result<PathBuf, ImageError> {
        let root = self
            .path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let script = root.join(&self.source.script);
        std::fs::create_dir_all(out_dir).map_err(|source| ImageError::Io {
            context: format!("creating {}", out_dir.display()),
            source,
        })?;
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(out_dir)
            .args(&self.source.args)
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

/// Finds the base image `spec` names: an image file, a recipe name in `recipes_dir` (its
/// newest build in `images_dir`, built first when there is none and `build` allows), or
/// DISTRO-RELEASE-FLAVOR[-ARCH] (newest build, `x86_64` when no arch is given).
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
            None if build => recipe.build(images_dir)?,
            None => {
                return Err(ImageError::NotFound(format!(
                    "no build of image `{spec}` in {}; build it with `ferrotron image build {}`",
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
    }

    #[test]
    fn recipe_fields_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("bad.yaml");
        std::fs::write(&p, "name: x\ndistro: my-distro\nrelease: \"1\"\nflavor: f\narch: x86_64\nsource: {script: s}\n").unwrap();
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("distro"), "{e}");
    }
}
