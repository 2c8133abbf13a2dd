//! The few Nova calls ferrotron makes: servers (create, show, delete, list), flavors,
//! absolute limits.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{ApiError, Client};

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Address>>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    pub addr: String,
    #[serde(default)]
    pub version: Option<u8>,
    #[serde(rename = "OS-EXT-IPS:type", default)]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: Option<u16>,
}

impl Server {
    /// The address of `kind` (`fixed` or `floating`), on `network` when given, IPv4 first.
    pub fn address(&self, kind: &str, network: Option<&str>) -> Option<String> {
        let mut candidates: Vec<&Address> = self
            .addresses
            .iter()
            .filter(|(net, _)| network.is_none_or(|n| n == net.as_str()))
            .flat_map(|(_, a)| a)
            .filter(|a| a.kind.as_deref().unwrap_or("fixed") == kind)
            .collect();
        candidates.sort_by_key(|a| if a.version == Some(6) { 1 } else { 0 });
        candidates.first().map(|a| a.addr.clone())
    }

    pub fn fault_text(&self) -> String {
        match &self.fault {
            Some(f) if !f.message.is_empty() => match f.code {
                Some(c) => format!("{} (code {c})", f.message),
                None => f.message.clone(),
            },
            _ => "no fault given".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub vcpus: u32,
    /// MiB.
    #[serde(default)]
    pub ram: u64,
}

/// Nova's absolute limits; `-1` means unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default = "unlimited")]
    pub max_total_instances: i64,
    #[serde(default)]
    pub total_instances_used: i64,
    #[serde(default = "unlimited")]
    pub max_total_cores: i64,
    #[serde(default)]
    pub total_cores_used: i64,
    #[serde(default = "unlimited", rename = "maxTotalRAMSize")]
    pub max_total_ram_size: i64,
    #[serde(default, rename = "totalRAMUsed")]
    pub total_ram_used: i64,
}

fn unlimited() -> i64 {
    -1
}

impl Limits {
    /// How many more servers of `flavor` the quota allows (`None`: unlimited).
    pub fn headroom(&self, flavor: Option<&Flavor>) -> Option<u64> {
        let left = |max: i64, used: i64, each: u64| -> Option<u64> {
            if max < 0 || each == 0 {
                None
            } else {
                Some(u64::try_from(max.saturating_sub(used)).unwrap_or(0) / each)
            }
        };
        [
            left(self.max_total_instances, self.total_instances_used, 1),
            flavor.and_then(|f| {
                left(
                    self.max_total_cores,
                    self.total_cores_used,
                    u64::from(f.vcpus),
                )
            }),
            flavor.and_then(|f| left(self.max_total_ram_size, self.total_ram_used, f.ram)),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    client: &Client,
    what: &str,
    v: Value,
) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError {
        cloud: client.cloud.name.clone(),
        method: Method::GET,
        url: what.to_string(),
        status: None,
        message: format!("unexpected answer: {e}"),
    })
}

pub async fn create_server(client: &Client, body: &Value) -> Result<String, ApiError> {
    let v = client
        .json("compute", Method::POST, "/servers", Some(body))
        .await?;
    v.pointer("/server/id")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| ApiError {
            cloud: client.cloud.name.clone(),
            method: Method::POST,
            url: "/servers".into(),
            status: None,
            message: format!("no server id in the answer: {v}"),
        })
}

/// The server, or `None` once it is gone.
pub async fn get_server(client: &Client, id: &str) -> Result<Option<Server>, ApiError> {
    match client
        .json("compute", Method::GET, &format!("/servers/{id}"), None)
        .await
    {
        Ok(v) => Ok(Some(parse(
            client,
            "server",
            v.get("server").cloned().unwrap_or(v),
        )?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Asks for deletion; a server already gone is fine.
pub async fn delete_server(client: &Client, id: &str) -> Result<(), ApiError> {
    match client
        .json("compute", Method::DELETE, &format!("/servers/{id}"), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every server of the project (with details), following pages; `name` is Nova's regex
/// filter.
pub async fn list_servers(client: &Client, name: Option<&str>) -> Result<Vec<Server>, ApiError> {
    const PAGE: usize = 200;
    let mut out: Vec<Server> = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut q = format!("/servers/detail?limit={PAGE}");
        if let Some(n) = name {
            q.push_str(&format!("&name={}", enc(n)));
        }
        if let Some(m) = &marker {
            q.push_str(&format!("&marker={}", enc(m)));
        }
        let v = client.json("compute", Method::GET, &q, None).await?;
        let page: Vec<Server> = parse(
            client,
            "servers",
            v.get("servers").cloned().unwrap_or(json!([])),
        )?;
        let more = v
            .get("servers_links")
            .and_then(Value::as_array)
            .is_some_and(|l| {
                l.iter()
                    .any(|x| x.get("rel").and_then(Value::as_str) == Some("next"))
            });
        let n = page.len();
        marker = page.last().map(|s| s.id.clone());
        out.extend(page);
        if !more || n == 0 {
            break;
        }
    }
    Ok(out)
}

/// Finds a flavor by id or name.
pub async fn find_flavor(client: &Client, which: &str) -> Result<Option<Flavor>, ApiError> {
    let v = client
        .json("compute", Method::GET, "/flavors/detail", None)
        .await?;
    let all: Vec<Flavor> = parse(
        client,
        "flavors",
        v.get("flavors").cloned().unwrap_or(json!([])),
    )?;
    Ok(all
        .iter()
        .find(|f| f.id == which)
        .or_else(|| all.iter().find(|f| f.name == which))
        .cloned())
}

pub async fn limits(client: &Client) -> Result<Limits, ApiError> {
    let v = client.json("compute", Method::GET, "/limits", None).await?;
    parse(
        client,
        "limits",
        v.pointer("/limits/absolute").cloned().unwrap_or(json!({})),
    )
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    crate::util::percent_encode(s, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_by_kind_network_and_family() {
        let s: Server = serde_json::from_value(json!({
            "id": "x", "name": "n", "status": "ACTIVE",
            "addresses": {
                "private": [
                    {"addr": "fd00::5", "version": 6, "OS-EXT-IPS:type": "fixed"},
                    {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
                    {"addr": "203.0.113.9", "version": 4, "OS-EXT-IPS:type": "floating"}
                ],
                "other": [{"addr": "10.9.0.1", "version": 4}]
            }
        }))
        .unwrap();
        assert_eq!(
            s.address("fixed", Some("private")).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            s.address("fixed", Some("other")).as_deref(),
            Some("10.9.0.1")
        );
        assert_eq!(s.address("floating", None).as_deref(), Some("203.0.113.9"));
        assert_eq!(s.address("floating", Some("other")), None);
        assert_eq!(s.fault_text(), "no fault given");
    }

    #[test]
    fn headroom_is_the_tightest_quota() {
        let l = Limits {
            max_total_instances: 10,
            total_instances_used: 4,
            max_total_cores: 20,
            total_cores_used: 16,
            max_total_ram_size: -1,
            total_ram_used: 0,
        };
        let f = Flavor {
            id: "1".into(),
            name: "m".into(),
            vcpus: 2,
            ram: 2048,
        };
        assert_eq!(l.headroom(None), Some(6));
        assert_eq!(l.headroom(Some(&f)), Some(2));
        let full = Limits {
            total_instances_used: 12,
            ..l.clone()
        };
        assert_eq!(full.headroom(None), Some(0));
        assert_eq!(
            Limits {
                max_total_instances: -1,
                ..Default::default()
            }
            .headroom(None),
            None
        );
        assert_eq!(enc("^ferrotron-"), "%5Eferrotron-");
    }
}
