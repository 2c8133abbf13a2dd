use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const MINIMAL: &str = "providers:\n  - {name: sim, kind: sim}\ntasks:\n  t: {path: tasks/t}\nrules:\n  - {name: r, topics: [a.b], item: x, type: y, tasks: [t]}\n";

#[test]
fn defaults_and_relative_paths() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.yaml", MINIMAL);
    let c = Config::load_with_env(&p, &[]).unwrap();
    assert_eq!(c.daemon.listen, "127.0.0.1:8080");
    assert_eq!(c.scheduler.lease_s, 60);
    assert_eq!(c.tasks["t"].path, d.path().join("tasks/t"));
    assert_eq!(c.task_pool("t"), "sim");
    assert_eq!(c.providers[0].max_instances(), 2);
}

#[test]
fn environment_overrides_nested_keys_and_list_entries() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "c.yaml", MINIMAL);
    let env = vec![
        (
            "FERROTRON__DAEMON__LISTEN".to_string(),
            "0.0.0.0:9".to_string(),
        ),
        (
            "FERROTRON__PROVIDERS__0__MAX_INSTANCES".to_string(),
            "7".to_string(),
        ),
        (
            "FERROTRON__SCHEDULER__LEASE_S".to_string(),
            "120".to_string(),
        ),
        (
            "FERROTRON__BUS__AMQP__URL".to_string(),
            "amqp://h/%2f".to_string(),
        ),
    ];
    let c = Config::load_with_env(&p, &env).unwrap();
    assert_eq!(c.daemon.listen, "0.0.0.0:9");
    assert_eq!(c.providers[0].max_instances(), 7);
    assert_eq!(c.scheduler.lease_s, 120);
    let amqp = c.bus.amqp.unwrap();
    assert_eq!(amqp.url, "amqp://h/%2f");
    assert_eq!(amqp.exchange, "amq.topic");
}

#[test]
fn errors_name_the_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "c.yaml",
        &MINIMAL
            .replace("max_instances", "x")
            .replace("kind: sim", "kind: sim, max_instance: 3"),
    );
    let e = Config::load_with_env(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("c.yaml") && e.contains("max_instance"), "{e}");

    let p = write(
        d.path(),
        "c2.yaml",
        &MINIMAL.replace("tasks: [t]", "tasks: [nope]"),
    );
    let e = Config::load_with_env(&p, &[]).unwrap_err().to_string();
    assert!(
        e.contains("c2.yaml") && e.contains("nope") && e.contains("rules[0]"),
        "{e}"
    );

    let env = vec![(
        "FERROTRON__SCHEDULER__LEASE_S".to_string(),
        "soon".to_string(),
    )];
    let p = write(d.path(), "c3.yaml", MINIMAL);
    let e = Config::load_with_env(&p, &env).unwrap_err().to_string();
    assert!(
        e.contains("FERROTRON__SCHEDULER__LEASE_S") && e.contains("soon"),
        "{e}"
    );

    for (url, why) in [
        ("results.example.org", "must start with http:// or https://"),
        ("https://", "has no host"),
        ("https://h/x?y=1", "must not contain '?'"),
    ] {
        let env = vec![("FERROTRON__DAEMON__PUBLIC_URL".to_string(), url.to_string())];
        let e = Config::load_with_env(&p, &env).unwrap_err().to_string();
        assert!(
            e.contains("c3.yaml") && e.contains("daemon.public_url") && e.contains(why),
            "{url}: {e}"
        );
    }
    let env = vec![(
        "FERROTRON__DAEMON__PUBLIC_URL".to_string(),
        "https://ferrotron.example.org/ci".to_string(),
    )];
    assert!(Config::load_with_env(&p, &env).is_ok());
}

#[test]
fn provider_entries_are_read_by_their_spec_and_errors_name_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let with = |providers: &str| {
        let p = write(
            d.path(),
            "p.yaml",
            &MINIMAL.replace("  - {name: sim, kind: sim}\n", providers),
        );
        Config::load_with_env(&p, &[]).map_err(|e| e.to_string())
    };
    let c = with(
            "  - {name: a, kind: sim, max_instances: 5}\n  - {name: b, pool: sim, kind: openstack, cloud: x, flavor: m1}\n",
        )
        .unwrap();
    assert_eq!(c.providers[0].max_instances(), 5);
    assert_eq!(c.providers[1].pool(), "sim");
    assert_eq!(c.providers[1].spec.kind(), "openstack");

    let e = with("  - {name: a, kind: sim}\n  - {name: b, kind: libvirt, urii: x}\n").unwrap_err();
    assert!(
        e.contains("p.yaml") && e.contains("providers[1]") && e.contains("`urii`"),
        "{e}"
    );
    assert!(
        e.contains("storage_pools"),
        "the known keys come from the spec: {e}"
    );
    let e = with("  - {name: a, kind: vmware}\n").unwrap_err();
    assert!(e.contains("providers[0]") && e.contains("vmware"), "{e}");
    let e = with("  - {name: a, kind: sim, failure_rate: 1.5}\n").unwrap_err();
    assert!(e.contains("providers[0].failure_rate: 1.5"), "{e}");
    let e = with("  - {kind: local}\n").unwrap_err();
    assert!(e.contains("providers[0]") && e.contains("name"), "{e}");
    let e = with("  - {name: here, kind: local}\n").unwrap_err();
    assert!(
        e.contains("providers[0] (`here`)") && e.contains("daemon.allow_local_provider"),
        "{e}"
    );
    let p = write(
        d.path(),
        "l.yaml",
        &MINIMAL.replace(
            "  - {name: sim, kind: sim}\n",
            "  - {name: here, kind: local}\n",
        ),
    );
    let env = vec![(
        "FERROTRON__DAEMON__ALLOW_LOCAL_PROVIDER".to_string(),
        "true".to_string(),
    )];
    assert!(Config::load_with_env(&p, &env).is_ok());
}

#[test]
fn includes_add_rules_and_rules_files_load_alone() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "more.yaml",
        "rules:\n  - {name: r2, topics: ['#'], item: '{name}', type: y, tasks: [t]}\n",
    );
    let p = write(
        d.path(),
        "c.yaml",
        &format!("{MINIMAL}include: [more.yaml]\n"),
    );
    let c = Config::load_with_env(&p, &[]).unwrap();
    assert_eq!(c.rules.len(), 2);
    let (set, cfg) = load_rules(&d.path().join("more.yaml")).unwrap();
    assert!(cfg.is_none());
    assert_eq!(set.len(), 1);
}
