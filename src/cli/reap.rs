//! `ferrotron reap`: find and destroy instances whose run is over.

use clap::Args;

use super::GlobalArgs;
use crate::provider::spec::{LibvirtSpec, LocalSpec};
use crate::provider::{self, Accel, Spec};
use crate::reaper::{self, Verdict};
use crate::runner::exit;
use crate::store::Store;

#[derive(Args, Debug)]
#[command(
    after_help = "An instance is a leak when its metadata names a run that is not live \
in the store (finished, failed, crashed, cancelled, or unknown). Instances whose metadata \
cannot be read are listed, never destroyed."
)]
pub struct ReapArgs {
    /// Only list what would be destroyed.
    #[arg(long)]
    pub dry_run: bool,
    /// Only consider instances created by this owner (a daemon id, or run@HOST).
    #[arg(long)]
    pub owner: Option<String>,
    /// libvirt connection URI; `none` skips libvirt.
    #[arg(long, env = "FERROTRON_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// The storage pool that libvirt's runs have their disks in (as `run --libvirt-pool`):
    /// their volumes are found and deleted there.
    #[arg(long, env = "FERROTRON_LIBVIRT_POOL", value_name = "POOL")]
    pub libvirt_pool: Option<String>,
    /// Also reap this OpenStack cloud [default: $OS_CLOUD when set].
    #[arg(long, visible_alias = "os-cloud", value_name = "NAME")]
    pub cloud: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: ReapArgs) -> i32 {
    let data_dir = global.data_dir();
    let store = match Store::open(&global.db_url()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: opening the store: {e}");
            return exit::INFRA;
        }
    };
    // Reaping only lists and deletes: one instance and no accelerator probe will do.
    let mut specs = vec![Spec::Local(LocalSpec {
        max_instances: Some(1),
    })];
    if args.libvirt_uri != "none" {
        specs.push(Spec::Libvirt(LibvirtSpec {
            max_instances: Some(1),
            accel: Accel::Tcg,
            storage_pool: args.libvirt_pool.clone(),
            ..LibvirtSpec::new(args.libvirt_uri.clone())
        }));
    }
    let cloud = super::cloud::CloudArgs {
        cloud: args.cloud.clone(),
        ..Default::default()
    };
    if cloud.configured() {
        specs.push(cloud.spec(None));
    }
    let mut code = exit::OK;
    let cx = provider::Context::new(&data_dir);
    let mut providers = Vec::new();
    for spec in &specs {
        match provider::build(spec, &cx).await {
            Ok(p) => providers.push(p),
            Err(e) => {
                eprintln!("error: {} backend: {e}", spec.kind());
                code = exit::INFRA;
            }
        }
    }
    for p in providers {
        let mut findings = match reaper::survey(p.as_ref(), &store, args.owner.as_deref()).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {} backend: {e}", p.kind());
                code = exit::INFRA;
                continue;
            }
        };
        reaper::reap(p.as_ref(), &mut findings, args.dry_run).await;
        for f in &findings {
            let run = f
                .instance
                .meta
                .as_ref()
                .map(|m| format!("run {} owner {}", m.run_uuid, m.owner))
                .unwrap_or_else(|| "no readable metadata".into());
            let action = match (&f.verdict, &f.error, args.dry_run) {
                (Verdict::Leaked, Some(e), _) => {
                    code = exit::INFRA;
                    format!("LEAKED, destroy failed: {e}")
                }
                (Verdict::Leaked, None, true) => "LEAKED, would destroy".into(),
                (Verdict::Leaked, None, false) => "LEAKED, destroyed".into(),
                (Verdict::Live, _, _) => "live, kept".into(),
                (Verdict::Held, _, _) => "held (its run failed and a hold keeps it), kept".into(),
                (Verdict::Foreign, _, _) => "not this store's run or owner, kept".into(),
                (Verdict::Unattributed, _, _) => "unattributed, kept (inspect by hand)".into(),
            };
            println!("{:<8} {:<48} {run}: {action}", p.kind(), f.instance.id);
        }
    }
    code
}
