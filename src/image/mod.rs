//! Base images: the pipeline that makes them and the choice of the one a run boots. Their
//! file format (names, sidecars, newest-wins lookup) is `crate::base_image`, re-exported here.
//!
//! `recipe` reads `images/*.yaml`; `build` turns a recipe into an image (`source` prepares
//! the disk); `prune` removes old builds.

pub mod build;
pub mod ctl;
pub mod prune;
pub mod recipe;
pub mod source;

use std::path::Path;

pub use crate::base_image::{
    BaseImage, BootInfo, ImageError, ImageName, SIDECARS, list, newest, stamp,
};

/// The image a run uses when nothing names one.
pub const DEFAULT_IMAGE: &str = "tiny";

/// The image runs on a provider use: `requested`, else the provider's configured default,
/// else [`DEFAULT_IMAGE`]. For base image files it is resolved here (a recipe's newest
/// build, built on first use when that is quick) to a path; an image service resolves
/// names itself; providers without images record their label.
pub async fn for_provider(
    images: &crate::provider::Images,
    requested: Option<&str>,
    recipes_dir: &Path,
    images_dir: &Path,
) -> Result<String, ImageError> {
    use crate::provider::Images;
    match images {
        Images::Fixed(label) => Ok(label.clone()),
        Images::Service { default } => Ok(requested
            .or(default.as_deref())
            .unwrap_or(DEFAULT_IMAGE)
            .to_string()),
        Images::Files => {
            let spec = requested.unwrap_or(DEFAULT_IMAGE).to_string();
            let (recipes, images) = (recipes_dir.to_path_buf(), images_dir.to_path_buf());
            let image = tokio::task::spawn_blocking(move || {
                recipe::resolve(&spec, &recipes, &images, true)
            })
            .await
            .map_err(|e| ImageError::Infra(format!("resolving the image: {e}")))??;
            Ok(image.path.display().to_string())
        }
    }
}
