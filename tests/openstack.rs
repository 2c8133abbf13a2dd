//! The OpenStack backend against a test double of a cloud (tests/support/openstack_double.rs).
//!
//! First the double itself is checked with the real openstacksdk (FERROTRON_TEST_PYTHON), so
//! it cannot drift from the real API. Then ferrotron's client is driven against it: auth and
//! token renewal, retries of 429/5xx, quota, ERROR, leaks. With FERROTRON_TEST_LIBVIRT=1 the
//! double backs servers with real libvirt guests and whole runs go through the binary.

mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use axum::http::Method;
use common::{parse_report, reachable_tempdir, stderr};
use ferrotron::provider::openstack::{OpenStackProvider, Overrides, config, glance};
use ferrotron::provider::{InstanceMeta, InstanceSpec, Provider, ProviderError};
use serde_json::Value;
use support::openstack_double::{self as double, Backing, Double, Options};

const CLOUD: &str = "double";

fn libvirt_enabled() -> bool {
    let on = std::env::var("FERROTRON_TEST_LIBVIRT").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: FERROTRON_TEST_LIBVIRT=1 not set (provisioning/test.sh sets it)");
    }
    on
}

/// ferrotron's settings for the double: its SSH port, quick polls, short timeouts.
fn settings(d: &Double, extra: &str) -> String {
    format!(
        "    ferrotron:\n      flavor: m1.small\n      network: private\n      ssh_port: {}\n      \
         poll_interval: 0.2\n      active_timeout: 180\n      boot_timeout: 180\n      \
         delete_timeout: 60\n      max_instances: 4\n{extra}",
        d.ssh_port
    )
}

/// Writes clouds.yaml for `d` into `dir` and returns its path.
fn clouds_file(d: &Double, dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("clouds.yaml");
    std::fs::write(&p, d.clouds_yaml(CLOUD, &settings(d, extra))).unwrap();
    p
}

fn provider(d: &Double, dir: &Path, extra: &str) -> OpenStackProvider {
    let f = clouds_file(d, dir, extra);
    let cfg = config::load_from(Some(CLOUD), &[f], &[], &[]).unwrap();
    OpenStackProvider::new(cfg, Overrides::default()).unwrap()
}

fn api_double(dir: &Path) -> Double {
    Double::start(Options {
        backing: Backing::None,
        dir: dir.join("double"),
        token_ttl: Duration::from_secs(3600),
    })
}

/// The binary with OS_CLIENT_CONFIG_FILE pointing at `clouds` and no other OS_* variable.
fn os_command(data: &Path, clouds: &Path, args: &[&str]) -> Command {
    let mut c = common::command(data, args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") {
            c.env_remove(k);
        }
    }
    c.env("OS_CLIENT_CONFIG_FILE", clouds);
    c
}

fn spec(image: &str) -> InstanceSpec {
    let keys = ferrotron::guest::keys::RunKeys::generate().unwrap();
    InstanceSpec {
        meta: InstanceMeta {
            run_uuid: uuid::Uuid::now_v7(),
            owner: "test@host".into(),
            image: image.into(),
            created_at: time::OffsetDateTime::now_utc(),
        },
        client_public_key: keys.client_public(),
        host_private_key_openssh: keys.host_private_openssh(),
        host_public_key: keys.host_public(),
    }
}

/// A fake base image: disk, kernel, initrd and sidecar, as the image pipeline makes them.
fn fake_base_image(dir: &Path, stamp: &str) -> ferrotron::image::BaseImage {
    let stem = format!("{stamp}-tiny-1-base-x86_64");
    std::fs::write(dir.join(format!("{stem}.qcow2")), b"disk bytes").unwrap();
    std::fs::write(dir.join(format!("{stem}.vmlinux")), b"kernel bytes").unwrap();
    std::fs::write(dir.join(format!("{stem}.initrd")), b"initrd bytes").unwrap();
    std::fs::write(
        dir.join(format!("{stem}.json")),
        format!(r#"{{"kernel":"{stem}.vmlinux","initrd":"{stem}.initrd","cmdline":"console=ttyS0 root=/dev/vda"}}"#),
    )
    .unwrap();
    ferrotron::image::BaseImage::open(&dir.join(format!("{stem}.qcow2"))).unwrap()
}

#[test]
fn openstacksdk_drives_the_double() {
    let Ok(python) = std::env::var("FERROTRON_TEST_PYTHON") else {
        eprintln!("SKIPPED: FERROTRON_TEST_PYTHON not set (provisioning/test.sh sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = api_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let image = dir.path().join("sdk.qcow2");
    std::fs::write(&image, vec![7u8; 300_000]).unwrap();
    let out = Command::new(python)
        .arg(common::repo().join("tests/support/openstack_sdk_check.py"))
        .arg(CLOUD)
        .arg(&image)
        .env("OS_CLIENT_CONFIG_FILE", &clouds)
        .env_remove("OS_CLOUD")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openstacksdk failed against the double:\n{}\nrequests: {:#?}",
        stderr(&out),
        d.log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("openstacksdk {}", v["sdk_version"]);
    assert_eq!(v["flavors"], serde_json::json!(["m1.small", "m1.tiny"]));
    assert_eq!(v["networks"], serde_json::json!(["private", "public"]));
    assert_eq!(v["max_instances"], 10);
    assert_eq!(v["image_status"], "active");
    assert_eq!(v["image_found"], true);
    assert_eq!(v["image_listed"], true);
    assert_eq!(v["image_roundtrip"], true);
    assert_eq!(v["cloud_layer_images"], serde_json::json!(["sdk-image"]));
    assert_eq!(v["server_status"], "ACTIVE");
    assert_eq!(v["server_metadata"]["ferrotron_run"], "sdk");
    assert_eq!(v["server_listed"], serde_json::json!(["sdk-server"]));
    assert_eq!(v["server_addresses"], serde_json::json!(["private"]));
    assert_eq!(v["cloud_layer_server"], "sdk-server");
    assert_eq!(v["server_gone"], true);
    assert_eq!(v["bad_image_error"][0], 400, "{v}");
    assert!(
        v["bad_image_error"][1]
            .as_str()
            .unwrap()
            .contains("could not be found"),
        "{v}"
    );
    assert_eq!(v["image_gone"], true);
    // The SDK negotiated a microversion from the version document and sent it.
    let mvs = d.microversions();
    assert!(mvs.iter().any(|m| m != "2.1"), "{mvs:?}");
    assert!(d.servers().is_empty());
}

#[test]
fn auth_renews_tokens_and_survives_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = Double::start(Options {
        backing: Backing::None,
        dir: dir.path().join("double"),
        token_ttl: Duration::from_secs(4),
    });
    let p = provider(&d, dir.path(), "");
    d.block_on(async {
        assert!(p.list().await.unwrap().is_empty());
        assert_eq!(d.auth_count(), 1);
        p.list().await.unwrap();
        assert_eq!(d.auth_count(), 1, "a fresh token is reused");
        // A 4 s token is renewed once less than a quarter of it is left, before it expires.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        p.list().await.unwrap();
        assert_eq!(d.auth_count(), 2);
        assert!(
            !d.log().iter().any(|(_, _, s)| *s == 401),
            "no request went out with an expired token: {:?}",
            d.log()
        );
        // Revoked behind our back: one 401, a new token, the same request again.
        d.revoke_tokens();
        p.list().await.unwrap();
        assert_eq!(d.auth_count(), 3);
        assert_eq!(d.log().iter().filter(|(_, _, s)| *s == 401).count(), 1);
    });

    // Application credentials, and wrong passwords named plainly.
    let f = dir.path().join("app.yaml");
    std::fs::write(
        &f,
        format!(
            "clouds:\n  app:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {}\n      \
             application_credential_id: {}\n      application_credential_secret: {}\n  bad:\n    auth:\n      \
             auth_url: {}/v3\n      username: {}\n      password: wrong\n      project_name: {}\n",
            d.auth_url(),
            double::APP_CRED_ID,
            double::APP_CRED_SECRET,
            d.auth_url(),
            double::USER,
            double::PROJECT
        ),
    )
    .unwrap();
    let app = OpenStackProvider::new(
        config::load_from(Some("app"), std::slice::from_ref(&f), &[], &[]).unwrap(),
        Overrides::default(),
    )
    .unwrap();
    let bad = OpenStackProvider::new(
        config::load_from(Some("bad"), &[f], &[], &[]).unwrap(),
        Overrides::default(),
    )
    .unwrap();
    d.block_on(async {
        assert!(app.list().await.is_ok());
        let e = bad.list().await.unwrap_err();
        assert!(!e.is_transient(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("cloud `bad`") && m.contains("401") && m.contains("user `ferrotron`"),
            "{m}"
        );
        assert!(!m.contains("wrong"), "the password must not show: {m}");
    });
}

#[test]
fn retries_with_backoff_quota_and_error_servers() {
    let dir = tempfile::tempdir().unwrap();
    let d = api_double(dir.path());
    let p = provider(&d, dir.path(), "");
    let imgdir = tempfile::tempdir().unwrap();
    let base = fake_base_image(imgdir.path(), "260101_0900");
    d.block_on(async {
        let id = glance::upload_base_image(p.client(), &base).await.unwrap();

        // 503 twice on a read: retried, and the caller never knows.
        d.inject(Some(Method::GET), "/servers/detail", 503, 2, None);
        let t0 = Instant::now();
        assert!(p.list().await.unwrap().is_empty());
        let statuses: Vec<u16> = d
            .log()
            .iter()
            .filter(|(_, path, _)| path.contains("/servers/detail"))
            .map(|(_, _, s)| *s)
            .collect();
        assert_eq!(statuses, [503, 503, 200]);
        assert!(d.microversions().iter().all(|m| m == "2.1"));
        assert!(
            t0.elapsed() >= Duration::from_millis(500),
            "backoff between tries"
        );

        // 429 on create, with Retry-After: waited and retried; the server is made once.
        d.inject(Some(Method::POST), "/compute/v2.1/servers", 429, 1, Some(1));
        let t0 = Instant::now();
        let inst = p.create(&spec("tiny")).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(1));
        assert_eq!(d.count("POST", "/compute/v2.1/servers"), 2);
        assert_eq!(d.servers().len(), 1);
        let server = &d.servers()[0];
        assert!(server.name.starts_with("ferrotron-"));
        assert_eq!(server.metadata["ferrotron_owner"], "test@host");
        assert_eq!(server.metadata["ferrotron_image"], "tiny");
        match &inst.access {
            ferrotron::provider::Access::Ssh(t) => {
                assert_eq!(Some(&t.host), server.fixed_ip.as_ref());
                assert_eq!(t.port, d.ssh_port);
                assert!(matches!(
                    t.host_key,
                    ferrotron::provider::HostKey::Pinned(_)
                ));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(inst.id, server.id);
        let listed = p.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta.as_ref().unwrap().owner, "test@host");

        // Capacity: the configured 4 bounds; then the quota does.
        let c = p.capacity().await.unwrap();
        assert_eq!((c.max_instances, c.in_use), (4, 1));
        d.set_quota_instances(2);
        let c = p.capacity().await.unwrap();
        assert_eq!((c.max_instances, c.in_use), (2, 1));

        // Delete waits until the server is gone; deleting again is fine.
        p.delete(&inst.id).await.unwrap();
        assert!(d.servers().is_empty());
        p.delete(&inst.id).await.unwrap();

        // Quota exhausted: transient, said as such, and asked once (no storm).
        d.set_quota_instances(0);
        let posts = d.count("POST", "/compute/v2.1/servers");
        let e = p.create(&spec("tiny")).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("quota exceeded") && m.contains("cloud `double`") && m.contains("/servers"),
            "{m}"
        );
        assert_eq!(d.count("POST", "/compute/v2.1/servers"), posts + 1);
        d.set_quota_instances(10);

        // A server that goes to ERROR is deleted and reported as transient.
        d.fail_next_boots(1);
        let e = p.create(&spec("tiny")).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("went to ERROR")
                && m.contains("No valid host was found")
                && m.contains("ferrotron-"),
            "{m}"
        );
        assert!(d.servers().is_empty(), "the ERROR server was deleted");

        // A missing image or flavor is permanent and named.
        let e = p.create(&spec("no-such-image")).await.unwrap_err();
        assert!(matches!(e, ProviderError::Permanent(_)), "{e}");
        assert!(
            e.to_string().contains("no-such-image") && e.to_string().contains("double"),
            "{e}"
        );
        let other = provider(&d, dir.path(), "");
        drop(other);

        // Vanished: explained.
        let inst = p.create(&spec(&id)).await.unwrap();
        assert_eq!(p.explain_loss(&inst.id).await, None);
        d.delete_behind_the_back(&inst.id);
        let why = p.explain_loss(&inst.id).await.unwrap().why;
        assert!(
            why.contains("no longer exists") && why.contains(&inst.id),
            "{why}"
        );
    });
}

#[test]
fn glance_upload_find_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = api_double(dir.path());
    let p = provider(&d, dir.path(), "");
    let imgdir = tempfile::tempdir().unwrap();
    let old = fake_base_image(imgdir.path(), "260101_0900");
    let new = fake_base_image(imgdir.path(), "260202_0900");
    d.block_on(async {
        let c = p.client();
        let old_id = glance::upload_base_image(c, &old).await.unwrap();
        // A failed data upload leaves no image behind.
        d.inject(Some(Method::PUT), "/file", 500, 10, None);
        assert!(glance::upload_base_image(c, &new).await.is_err());
        d.inject(Some(Method::PUT), "/file", 500, 0, None);
        let new_id = glance::upload_base_image(c, &new).await.unwrap();
        let found = |which: &'static str| async move {
            glance::find_image(c, which).await.unwrap().map(|i| i.id)
        };
        assert_eq!(
            found("tiny").await.as_deref(),
            Some(new_id.as_str()),
            "newest build wins"
        );
        assert_eq!(found("tiny-1-base").await.as_deref(), Some(new_id.as_str()));
        assert_eq!(
            found("260101_0900-tiny-1-base-x86_64").await.as_deref(),
            Some(old_id.as_str())
        );
        assert_eq!(found("fedora").await, None);
        let by_id = glance::find_image(c, &old_id).await.unwrap().unwrap();
        assert_eq!(
            by_id.name.as_deref(),
            Some("260101_0900-tiny-1-base-x86_64")
        );
        // The disk references its kernel and initrd as Nova expects.
        let v = c
            .json(
                "image",
                reqwest::Method::GET,
                &format!("/images/{new_id}"),
                None,
            )
            .await
            .unwrap();
        let kernel = v["kernel_id"].as_str().unwrap();
        let k = c
            .json(
                "image",
                reqwest::Method::GET,
                &format!("/images/{kernel}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(k["disk_format"], "aki");
        assert_eq!(k["size"], 12);
        assert_eq!(v["os_command_line"], "console=ttyS0 root=/dev/vda");
        glance::delete(c, &new_id).await.unwrap();
        glance::delete(c, &new_id).await.unwrap();
        assert_eq!(found("tiny").await.as_deref(), Some(old_id.as_str()));
    });
}

#[test]
fn reap_destroys_leaked_servers_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = api_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let leaked_run = uuid::Uuid::now_v7().to_string();
    let leaked = d.insert_server(
        &format!("ferrotron-{leaked_run}"),
        &[
            ("ferrotron_run", leaked_run.as_str()),
            ("ferrotron_owner", "run@elsewhere"),
            ("ferrotron_image", "tiny"),
            ("ferrotron_created_at", "2026-01-01T00:00:00Z"),
        ],
    );
    let unattributed = d.insert_server("ferrotron-half-made", &[]);
    let foreign = d.insert_server("someone-elses-web-server", &[("role", "web")]);
    // A server of a run another store knows (another farm on the same cloud).
    let other_run = uuid::Uuid::now_v7().to_string();
    let other_farms = d.insert_server(
        &format!("ferrotron-{other_run}"),
        &[
            ("ferrotron_run", other_run.as_str()),
            ("ferrotron_owner", "farm-b"),
            ("ferrotron_image", "tiny"),
            ("ferrotron_created_at", "2026-01-01T00:00:00Z"),
        ],
    );
    // Only runs this store knows can leak: record the leaked one as finished.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = format!("sqlite://{}", data.path().join("ferrotron.db").display());
        let store = ferrotron::store::Store::open(&db).await.unwrap();
        let uuid: uuid::Uuid = leaked_run.parse().unwrap();
        store
            .create_run(&ferrotron::store::NewRun {
                uuid,
                task: "t".into(),
                item: "i".into(),
                item_type: "koji_build".into(),
                arch: "noarch".into(),
                backend: "openstack".into(),
                params: serde_json::json!({}),
                log_path: String::new(),
                artifacts_dir: String::new(),
                owner: Some("run@elsewhere".into()),
            })
            .await
            .unwrap();
        store
            .finish_run(uuid, ferrotron::store::RunState::Finished, Some(0), None)
            .await
            .unwrap();
    });

    let reap = |extra: &[&str]| -> Output {
        let mut args = vec!["reap", "--libvirt-uri", "none", "--cloud", CLOUD];
        args.extend_from_slice(extra);
        os_command(data.path(), &clouds, &args).output().unwrap()
    };
    let out = reap(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&leaked) && text.contains("LEAKED, would destroy"),
        "{text}"
    );
    assert!(
        text.contains(&unattributed) && text.contains("unattributed, kept"),
        "{text}"
    );
    assert!(!text.contains(&foreign), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&other_farms) && l.contains("not this store's run or owner, kept")),
        "{text}"
    );
    assert_eq!(d.servers().len(), 4);

    // Another owner's leak is not ours to reap.
    let out = reap(&["--owner", "run@here"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not this store's run or owner, kept"));
    assert_eq!(d.servers().len(), 4);

    let out = reap(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("LEAKED, destroyed"));
    let left: Vec<String> = d.servers().into_iter().map(|s| s.id).collect();
    assert_eq!(left.len(), 3);
    assert!(left.contains(&unattributed) && left.contains(&foreign) && left.contains(&other_farms));

    // A cloud that is not configured is an error that says where it looked.
    let out = os_command(
        data.path(),
        &clouds,
        &["reap", "--libvirt-uri", "none", "--cloud", "nope"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("`nope` is not configured"),
        "{}",
        stderr(&out)
    );
}

// ------------------------------------------------------------------ real guests

/// A double whose servers are libvirt guests, with the tiny image in its Glance.
fn guest_double(dir: &Path) -> Double {
    let d = Double::start(Options {
        backing: Backing::Libvirt {
            state_dir: dir.join("guests"),
        },
        dir: dir.join("double"),
        token_ttl: Duration::from_secs(3600),
    });
    let images = std::env::var("FERROTRON_TEST_IMAGES").expect("FERROTRON_TEST_IMAGES");
    let tiny =
        ferrotron::image::newest(Path::new(&images), "tiny-1-base-x86_64").expect("a tiny image");
    let base = ferrotron::image::BaseImage::open(&tiny).unwrap();
    let p = provider(&d, dir, "");
    d.block_on(glance::upload_base_image(p.client(), &base))
        .unwrap();
    d
}

/// Nothing is left: no server in the double, no guest in libvirt.
fn assert_no_leak(d: &Double, dir: &Path) {
    assert!(
        d.wait_for(Duration::from_secs(30), |s| s.is_empty()),
        "servers left: {:?}",
        d.servers()
    );
    let left: Vec<String> = std::fs::read_dir(dir.join("guests"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ferrotron-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "guests left behind: {left:?}");
}

fn run_args(extra: &[&str], task: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--format",
        "json",
        "--backend",
        "openstack",
        "--cloud",
        CLOUD,
        "--image",
        "tiny",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(task.to_string());
    v
}

fn phases(v: &Value) -> String {
    v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {:.1}s",
                p["name"].as_str().unwrap(),
                p["duration_ms"].as_f64().unwrap() / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn a_run_goes_through_the_cloud_end_to_end() {
    if !libvirt_enabled() {
        return;
    }
    let dir = reachable_tempdir();
    let data = tempfile::tempdir().unwrap();
    let d = guest_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let t0 = Instant::now();
    let args = run_args(
        &["-i", "bash-5.2-1.fc41", "-t", "koji_build", "-a", "x86_64"],
        "tests/fixtures/two-results",
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = os_command(data.path(), &clouds, &refs).output().unwrap();
    let v = parse_report(&out);
    eprintln!(
        "TIMING full run through the double: {:.1}s ({})",
        t0.elapsed().as_secs_f64(),
        phases(&v)
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(v["backend"], "openstack");
    assert_eq!(v["state"], "finished");
    assert_eq!(v["attempts"], 1);
    assert_eq!(common::outcomes(&v), ["PASSED", "FAILED"]);
    let artifacts = Path::new(v["artifacts_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(artifacts.join("detail.log")).unwrap(),
        "detail for bash-5.2-1.fc41\n"
    );
    assert!(
        stderr(&out).contains("[produce] checking bash-5.2-1.fc41 on x86_64"),
        "{}",
        stderr(&out)
    );
    // One server was made, with the run's metadata, and it is gone.
    assert_eq!(d.count("POST", "/compute/v2.1/servers"), 1);
    assert!(d.count("DELETE", "/compute/v2.1/servers/") >= 1);
    assert_no_leak(&d, dir.path());
}

#[test]
fn error_servers_and_quota_are_retried_by_the_run() {
    if !libvirt_enabled() {
        return;
    }
    let dir = reachable_tempdir();
    let data = tempfile::tempdir().unwrap();
    let d = guest_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let task = tempfile::tempdir().unwrap();
    std::fs::write(
        task.path().join("runtask.yml"),
        "name: hello\ndesc: d\nmaintainer: m\nactions:\n  - name: hi\n    shell: [\"echo hello from $(hostname)\"]\n",
    )
    .unwrap();
    let t = task.path().display().to_string();

    // The first server goes to ERROR: deleted, and the run's second attempt works.
    d.fail_next_boots(1);
    let args = run_args(&[], &t);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = os_command(data.path(), &clouds, &refs).output().unwrap();
    let v = parse_report(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(v["attempts"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("spawn attempt 1/3 failed") && err.contains("went to ERROR"),
        "{err}"
    );
    assert!(err.contains("[hi] hello from"), "{err}");
    assert_eq!(d.count("POST", "/compute/v2.1/servers"), 2);
    assert_no_leak(&d, dir.path());

    // No quota: the run says so, waits, and goes on once there is room again.
    d.set_quota_instances(0);
    let mut child = os_command(data.path(), &clouds, &refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("spawn attempt 1/3 failed") {
            assert!(line.contains("quota exceeded"), "{line}");
            d.set_quota_instances(10);
            break;
        }
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{seen}{}", rest.join("\n"));
    let v = parse_report(&out);
    assert_eq!(v["attempts"], 2);
    // Two attempts, two POSTs: the quota answer was not hammered.
    assert_eq!(d.count("POST", "/compute/v2.1/servers"), 4);
    assert_no_leak(&d, dir.path());
}

#[test]
fn a_server_deleted_mid_task_is_a_clear_run_error() {
    if !libvirt_enabled() {
        return;
    }
    let dir = reachable_tempdir();
    let data = tempfile::tempdir().unwrap();
    let d = guest_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let task = tempfile::tempdir().unwrap();
    std::fs::write(
        task.path().join("runtask.yml"),
        "name: nap\ndesc: d\nmaintainer: m\nactions:\n  - name: nap\n    shell: [\"echo napping; sleep 600\"]\n",
    )
    .unwrap();
    let args = run_args(&["--timeout", "300"], &task.path().display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = os_command(data.path(), &clouds, &refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("[nap] napping") {
            break;
        }
    }
    let servers = d.servers();
    assert_eq!(servers.len(), 1, "{seen}");
    let t0 = Instant::now();
    d.delete_behind_the_back(&servers[0].id);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{seen}{}", rest.join("\n"));
    let v = parse_report(&out);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the loss was noticed promptly"
    );
    assert_eq!(out.status.code(), Some(4), "{seen}{}", rest.join("\n"));
    assert_eq!(v["state"], "crashed");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("lost") && e.contains(&servers[0].id), "{e}");
    assert!(
        e.contains("no longer exists") || e.contains("is being deleted outside this run"),
        "{e}"
    );
    assert_no_leak(&d, dir.path());
}

#[test]
fn floating_ips_are_allocated_and_released_with_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = api_double(dir.path());
    let p = provider(
        &d,
        dir.path(),
        "      address: floating\n      floating_network: public\n",
    );
    let imgdir = tempfile::tempdir().unwrap();
    let base = fake_base_image(imgdir.path(), "260101_0900");
    d.block_on(async {
        glance::upload_base_image(p.client(), &base).await.unwrap();
        let inst = p.create(&spec("tiny")).await.unwrap();
        let fixed = d.servers()[0].fixed_ip.clone().unwrap();
        let host = match &inst.access {
            ferrotron::provider::Access::Ssh(t) => t.host.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(host, fixed, "reached by its floating address");
        assert_eq!(d.count("POST", "/network/v2.0/floatingips"), 1);
        p.delete(&inst.id).await.unwrap();
        assert_eq!(d.count("DELETE", "/network/v2.0/floatingips/"), 1);
        let left = p
            .client()
            .json("network", reqwest::Method::GET, "/floatingips", None)
            .await
            .unwrap();
        assert_eq!(
            left["floatingips"],
            serde_json::json!([]),
            "released with the server"
        );
    });
    // Without a pool to allocate from, floating mode is a configuration error.
    let p = provider(&d, dir.path(), "      address: floating\n");
    d.block_on(async {
        let e = p.create(&spec("tiny")).await.unwrap_err();
        assert!(matches!(e, ProviderError::Permanent(_)), "{e}");
        assert!(e.to_string().contains("floating_network"), "{e}");
        assert!(
            d.wait_for(Duration::from_secs(10), |s| s.is_empty()),
            "the server was deleted"
        );
    });
}

/// The farm's production shape in one daemon: a task's pool served by the local libvirt and
/// by a cloud (the double, its servers real guests) at once, filled in the config's order;
/// jobs come from the real fedora-messaging publisher through RabbitMQ. Both providers run
/// one, every run finishes, nothing is left in libvirt or in the cloud.
#[test]
fn one_pool_on_libvirt_and_the_cloud_runs_jobs_from_fedora_messaging() {
    use common::daemon::{Daemon, TOKEN, all_terminal, fedora_publish, wait_jobs};
    use common::free_port;
    use ferrotron::store::{RunState, Store};
    if !libvirt_enabled() {
        return;
    }
    let (Ok(amqp), Ok(python)) = (
        std::env::var("FERROTRON_TEST_AMQP"),
        std::env::var("FERROTRON_TEST_PYTHON"),
    ) else {
        eprintln!("SKIPPED: FERROTRON_TEST_AMQP and FERROTRON_TEST_PYTHON not set");
        return;
    };
    let dir = reachable_tempdir();
    let d = guest_double(dir.path());
    let clouds = clouds_file(&d, dir.path(), "");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let task = common::daemon::write_task(&data.join("tasks"), "t", "echo on ${item}; sleep 6");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let (topic, queue) = (
        format!("mixed.{tag}.build"),
        format!("ferrotron-mixed-{tag}"),
    );
    let port = free_port();
    let config = data.join("farm.yaml");
    std::fs::write(
        &config,
        format!(
            "daemon: {{id: m1, farm: mixed, listen: '127.0.0.1:{port}', api_token: {TOKEN}, \
             db: 'sqlite://{db}'}}\n\
             bus:\n  amqp: {{url: '{amqp}', queue: {queue}, prefetch: 8}}\n\
             scheduler: {{heartbeat_s: 2, lease_s: 20, reap_interval_s: 5}}\n\
             providers:\n\
             \x20 - {{name: vm, kind: libvirt, uri: 'qemu:///system', image: tiny, pool: p, max_instances: 1}}\n\
             \x20 - {{name: cloud, kind: openstack, cloud: {CLOUD}, image: tiny, pool: p, max_instances: 1}}\n\
             tasks:\n  t: {{path: '{task}', pool: p, timeout_s: 600}}\n\
             rules:\n  - {{name: r, topics: ['{topic}'], item: '{{name}}', type: koji_build, arches: [x86_64], tasks: [t]}}\n",
            db = data.join("ferrotron.db").display(),
            task = task.display(),
        ),
    )
    .unwrap();
    let clouds_s = clouds.to_str().unwrap().to_string();
    let daemon = Daemon::start_with(
        &data,
        &config,
        port,
        &[("OS_CLIENT_CONFIG_FILE", &clouds_s)],
    );
    daemon.wait_consuming();
    for name in ["bash", "zsh"] {
        fedora_publish(
            &python,
            dir.path(),
            &amqp,
            &topic,
            &format!("{tag}-{name}"),
            &serde_json::json!({"name": name}),
        );
    }
    let store = d
        .block_on(Store::open(&format!(
            "sqlite://{}",
            data.join("ferrotron.db").display()
        )))
        .unwrap();
    let jobs = d.block_on(wait_jobs(&store, Duration::from_secs(400), |j| {
        all_terminal(j, 2)
    }));
    let mut by_provider: Vec<(String, RunState)> = jobs
        .iter()
        .map(|j| (j.provider.clone().unwrap_or_default(), j.state))
        .collect();
    by_provider.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_provider,
        [
            ("cloud".to_string(), RunState::Finished),
            ("vm".to_string(), RunState::Finished)
        ],
        "{}",
        daemon.log()
    );
    for j in &jobs {
        let run = d
            .block_on(store.run(j.current_run().unwrap()))
            .unwrap()
            .unwrap();
        let log = std::fs::read_to_string(&run.log_path).unwrap();
        assert!(log.contains(&format!("[work] on {}", j.item)), "{log}");
        assert_eq!(
            run.backend,
            if j.provider.as_deref() == Some("vm") {
                "libvirt"
            } else {
                "openstack"
            }
        );
    }
    assert_eq!(
        d.count("POST", "/compute/v2.1/servers"),
        1,
        "one job went to the cloud"
    );
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        daemon.log()
    );
    assert_no_leak(&d, dir.path());
    for j in &jobs {
        let name = format!("ferrotron-{}", j.current_run().unwrap());
        assert!(
            !common::daemon::domain_exists(&name),
            "{name} left in libvirt"
        );
    }
}
