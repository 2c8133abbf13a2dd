//! A simulated provider for tests and benchmarks: no virtual machines, a latency and failure
//! model, and instances that are directories on this host (`Access::Local`), so the runner
//! really uploads, runs and collects the task through the same code as every backend.
//!
//! Instances are remembered in memory *and* as directories with a metadata file, so `list`
//! finds what a killed process left, exactly as a real backend would.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::RngExt;

use super::local::LocalProvider;
use super::{Capacity, Instance, InstanceSpec, Listed, Provider, ProviderError};

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Directory holding one sub directory per instance.
    pub root: PathBuf,
    pub max_instances: usize,
    pub create_latency: Duration,
    pub delete_latency: Duration,
    /// Uniform extra latency in `0..jitter` on each call.
    pub jitter: Duration,
    /// Probability that a create fails (transiently).
    pub failure_rate: f64,
}

pub struct SimProvider {
    cfg: SimConfig,
    dirs: LocalProvider,
    in_use: AtomicUsize,
    /// Creates and deletes seen, for tests.
    pub stats: Mutex<SimStats>,
}

#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub created: usize,
    pub failed: usize,
    pub deleted: usize,
}

impl SimProvider {
    pub fn new(cfg: SimConfig) -> Self {
        SimProvider {
            dirs: LocalProvider::new(cfg.root.clone(), cfg.max_instances.max(1)),
            cfg,
            in_use: AtomicUsize::new(0),
            stats: Mutex::default(),
        }
    }

    async fn delay(&self, base: Duration) {
        let jitter = if self.cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            let j = rand::rng().random_range(0..self.cfg.jitter.as_micros().max(1) as u64);
            Duration::from_micros(j)
        };
        let d = base + jitter;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[async_trait]
impl Provider for SimProvider {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProviderError> {
        self.delay(self.cfg.create_latency).await;
        if self.cfg.failure_rate > 0.0 && rand::rng().random_bool(self.cfg.failure_rate.min(1.0)) {
            self.stats.lock().expect("stats").failed += 1;
            return Err(ProviderError::Transient(
                "simulated failure: the instance did not come up".into(),
            ));
        }
        let instance = self.dirs.create(spec).await?;
        self.in_use.fetch_add(1, Ordering::Relaxed);
        self.stats.lock().expect("stats").created += 1;
        Ok(instance)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        self.delay(self.cfg.delete_latency).await;
        let existed = tokio::fs::try_exists(self.cfg.root.join(id))
            .await
            .unwrap_or(false);
        self.dirs.delete(id).await?;
        if existed {
            let _ = self
                .in_use
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            self.stats.lock().expect("stats").deleted += 1;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>, ProviderError> {
        self.dirs.list().await
    }

    async fn capacity(&self) -> Result<Capacity, ProviderError> {
        Ok(Capacity {
            max_instances: self.cfg.max_instances,
            in_use: self.in_use.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::InstanceMeta;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            meta: InstanceMeta {
                run_uuid: uuid::Uuid::now_v7(),
                owner: "farm/test".into(),
                image: "sim".into(),
                created_at: time::OffsetDateTime::now_utc(),
            },
            client_public_key: String::new(),
            host_private_key_openssh: String::new(),
            host_public_key: String::new(),
        }
    }

    #[tokio::test]
    async fn latency_failures_and_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SimConfig {
            root: tmp.path().into(),
            max_instances: 4,
            create_latency: Duration::from_millis(20),
            delete_latency: Duration::ZERO,
            jitter: Duration::ZERO,
            failure_rate: 0.0,
        };
        let p = SimProvider::new(cfg.clone());
        let t0 = std::time::Instant::now();
        let i = p.create(&spec()).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert_eq!(p.capacity().await.unwrap().in_use, 1);
        assert_eq!(p.list().await.unwrap()[0].id, i.id);
        p.delete(&i.id).await.unwrap();
        p.delete(&i.id).await.unwrap();
        assert_eq!(p.capacity().await.unwrap().in_use, 0);

        let failing = SimProvider::new(SimConfig {
            failure_rate: 1.0,
            create_latency: Duration::ZERO,
            ..cfg
        });
        let e = failing.create(&spec()).await.unwrap_err();
        assert!(e.is_transient());
        assert!(failing.list().await.unwrap().is_empty());
    }
}
