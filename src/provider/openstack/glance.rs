//! The few Glance calls ferrotron makes: find an image, create one and upload its data,
//! delete it. The image pipeline publishes base images with [`upload_base_image`].

use std::path::Path;

use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::{ApiError, Client};
use super::nova::enc;
use crate::base_image::{BaseImage, ImageName};

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub created_at: String,
}

fn bad_answer(client: &Client, url: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError {
        cloud: client.cloud.name.clone(),
        method: Method::GET,
        url: url.to_string(),
        status: None,
        message: format!("unexpected answer: {e}"),
    }
}

async fn list(client: &Client, query: &str) -> Result<Vec<Image>, ApiError> {
    let mut out = Vec::new();
    let mut path = format!("/images?{query}");
    loop {
        let v = client.json("image", Method::GET, &path, None).await?;
        let page: Vec<Image> =
            serde_json::from_value(v.get("images").cloned().unwrap_or(json!([])))
                .map_err(|e| bad_answer(client, &path, e))?;
        out.extend(page);
        match v.get("next").and_then(Value::as_str) {
            // `next` is given from the service root: `/v2/images?marker=…`.
            Some(next) => path = next.strip_prefix("/v2").unwrap_or(next).to_string(),
            None => break,
        }
    }
    Ok(out)
}

/// Finds the image `which` names: an id, an exact name (the newest active one if several),
/// or a `DISTRO[-RELEASE[-FLAVOR[-ARCH]]]` prefix of ferrotron's image names
/// (`YYMMDD_HHMM-DISTRO-RELEASE-FLAVOR-ARCH`), newest build first.
pub async fn find_image(client: &Client, which: &str) -> Result<Option<Image>, ApiError> {
    if uuid::Uuid::parse_str(which).is_ok() {
        match client
            .json("image", Method::GET, &format!("/images/{which}"), None)
            .await
        {
            Ok(v) => {
                return serde_json::from_value(v)
                    .map(Some)
                    .map_err(|e| bad_answer(client, which, e));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let newest = |mut v: Vec<Image>| {
        v.retain(|i| i.status == "active");
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        v.into_iter().next()
    };
    let exact = list(client, &format!("name={}", enc(which))).await?;
    if let Some(i) = newest(exact) {
        return Ok(Some(i));
    }
    let want: Vec<&str> = which.split('-').collect();
    let mut candidates: Vec<(String, Image)> = list(client, "status=active&limit=100")
        .await?
        .into_iter()
        .filter_map(|i| {
            let name = i.name.clone()?;
            let stem = ["qcow2", "raw", "img"]
                .iter()
                .find_map(|e| name.strip_suffix(&format!(".{e}")))
                .unwrap_or(&name);
            let parsed = ImageName::parse(&format!("{stem}.qcow2"))?;
            let key = parsed.key();
            let have: Vec<&str> = key.split('-').collect();
            (want.len() <= have.len() && have[..want.len()] == want[..])
                .then_some((parsed.stamp, i))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(candidates.into_iter().next().map(|(_, i)| i))
}

/// Creates an image record and uploads `file` into it; returns its id. A failed upload
/// deletes the record.
pub async fn upload(
    client: &Client,
    name: &str,
    disk_format: &str,
    container_format: &str,
    properties: Map<String, Value>,
    file: &Path,
) -> Result<String, ApiError> {
    let mut body = json!({
        "name": name,
        "disk_format": disk_format,
        "container_format": container_format,
        "visibility": "private",
    });
    for (k, v) in properties {
        body[k] = v;
    }
    let v = client
        .json("image", Method::POST, "/images", Some(&body))
        .await?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_answer(client, "/images", "no image id"))?
        .to_string();
    let file = file.to_path_buf();
    let build = |rb: RequestBuilder| -> Result<RequestBuilder, String> {
        // Reopened for every attempt: a retried upload starts from the beginning.
        let f =
            std::fs::File::open(&file).map_err(|e| format!("opening {}: {e}", file.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("reading {}: {e}", file.display()))?
            .len();
        Ok(rb
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(reqwest::Body::from(tokio::fs::File::from_std(f))))
    };
    let sent = client
        .send("image", Method::PUT, &format!("/images/{id}/file"), &build)
        .await;
    let r = match sent {
        Ok(resp) => client.read(Method::PUT, resp).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        let _ = delete(client, &id).await;
        return Err(e);
    }
    Ok(id)
}

/// Deletes an image; one already gone is fine.
pub async fn delete(client: &Client, id: &str) -> Result<(), ApiError> {
    match client
        .json("image", Method::DELETE, &format!("/images/{id}"), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Publishes a base image as Nova boots it: a kernel and an initrd of its own (`aki`,
/// `ari`) referenced by the disk's `kernel_id`, `ramdisk_id` and `os_command_line`, when
/// its sidecar asks for direct kernel boot. The disk is named after the file, without
/// `.qcow2`. Returns the disk image's id; nothing is left behind on failure.
pub async fn upload_base_image(client: &Client, image: &BaseImage) -> Result<String, ApiError> {
    let label = image.label();
    let stem = label.strip_suffix(".qcow2").unwrap_or(&label).to_string();
    let mut made: Vec<String> = Vec::new();
    let mut props = Map::new();
    let r = async {
        if let Some(k) = &image.boot.kernel {
            let id = upload(
                client,
                &format!("{stem}-kernel"),
                "aki",
                "aki",
                Map::new(),
                k,
            )
            .await?;
            props.insert("kernel_id".into(), json!(id));
            made.push(id);
        }
        if let Some(i) = &image.boot.initrd {
            let id = upload(
                client,
                &format!("{stem}-ramdisk"),
                "ari",
                "ari",
                Map::new(),
                i,
            )
            .await?;
            props.insert("ramdisk_id".into(), json!(id));
            made.push(id);
        }
        if let Some(c) = &image.boot.cmdline {
            props.insert("os_command_line".into(), json!(c));
        }
        props.insert("hw_disk_bus".into(), json!("virtio"));
        props.insert("min_ram".into(), json!(image.boot.memory_mib));
        upload(client, &stem, "qcow2", "bare", props.clone(), &image.path).await
    }
    .await;
    if r.is_err() {
        for id in made {
            let _ = delete(client, &id).await;
        }
    }
    r
}
