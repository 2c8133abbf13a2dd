//! The few Neutron calls ferrotron makes: a network's id from its name, and floating IPs
//! it allocates for a server and releases with it.

use reqwest::Method;
use serde_json::{Value, json};

use super::auth::{ApiError, Client};
use super::nova::enc;

fn looks_like_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// The id of the network named (or with id) `which`; `None` if there is none.
pub async fn find_network(client: &Client, which: &str) -> Result<Option<String>, ApiError> {
    if looks_like_uuid(which) {
        return Ok(Some(which.to_string()));
    }
    let v = client
        .json(
            "network",
            Method::GET,
            &format!("/networks?name={}", enc(which)),
            None,
        )
        .await?;
    Ok(v.get("networks")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|n| n.get("id"))
        .and_then(Value::as_str)
        .map(String::from))
}

/// The description ferrotron puts on a floating IP it allocates for `server`.
pub fn tag(server: &str) -> String {
    format!("ferrotron:{server}")
}

/// Allocates a floating IP on `network` for the first port of `server`.
pub async fn allocate_floating_ip(
    client: &Client,
    network_id: &str,
    server: &str,
) -> Result<String, ApiError> {
    let ports = client
        .json(
            "network",
            Method::GET,
            &format!("/ports?device_id={}", enc(server)),
            None,
        )
        .await?;
    let port = ports
        .get("ports")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError {
            cloud: client.cloud.name.clone(),
            method: Method::GET,
            url: format!("/ports?device_id={server}"),
            status: None,
            message: format!("server {server} has no port to attach a floating IP to"),
        })?
        .to_string();
    let body = json!({"floatingip": {
        "floating_network_id": network_id,
        "port_id": port,
        "description": tag(server),
    }});
    let v = client
        .json("network", Method::POST, "/floatingips", Some(&body))
        .await?;
    v.pointer("/floatingip/floating_ip_address")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| ApiError {
            cloud: client.cloud.name.clone(),
            method: Method::POST,
            url: "/floatingips".into(),
            status: None,
            message: format!("no floating_ip_address in the answer: {v}"),
        })
}

/// Releases the floating IPs ferrotron allocated for `server`.
pub async fn release_floating_ips(client: &Client, server: &str) -> Result<(), ApiError> {
    let v = client
        .json(
            "network",
            Method::GET,
            &format!("/floatingips?description={}", enc(&tag(server))),
            None,
        )
        .await?;
    let ids: Vec<String> = v
        .get("floatingips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                // Filtering by description is an extension: check it ourselves.
                .filter(|f| {
                    f.get("description").and_then(Value::as_str) == Some(tag(server).as_str())
                })
                .filter_map(|f| f.get("id")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for id in ids {
        match client
            .json(
                "network",
                Method::DELETE,
                &format!("/floatingips/{id}"),
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
