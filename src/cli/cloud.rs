//! Command-line choices of the OpenStack backend, shared by `run` and `reap`.

use clap::Args;

use crate::provider::Spec;
use crate::provider::spec::OpenStackSpec;

#[derive(Args, Debug, Clone, Default)]
pub struct CloudArgs {
    /// OpenStack cloud from clouds.yaml (./, ~/.config/openstack/, /etc/openstack/, or
    /// $OS_CLIENT_CONFIG_FILE) [default: $OS_CLOUD].
    #[arg(long, visible_alias = "os-cloud", value_name = "NAME")]
    pub cloud: Option<String>,
    /// Nova flavor (name or id) [default: the cloud's `ferrotron: {flavor}`].
    #[arg(long, value_name = "FLAVOR")]
    pub flavor: Option<String>,
    /// Network to attach servers to (name or id) [default: the cloud's `ferrotron: {network}`].
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
}

impl CloudArgs {
    /// Whether a cloud is named at all (here or by OS_CLOUD).
    pub fn configured(&self) -> bool {
        self.cloud.is_some() || std::env::var_os("OS_CLOUD").is_some_and(|v| !v.is_empty())
    }

    /// The provider these flags describe, booting `image` by default.
    pub fn spec(&self, image: Option<String>) -> Spec {
        Spec::Openstack(OpenStackSpec {
            cloud: self.cloud.clone(),
            flavor: self.flavor.clone(),
            network: self.network.clone(),
            image,
            ..Default::default()
        })
    }
}
