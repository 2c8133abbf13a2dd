//! Test doubles shared by integration tests.
pub mod openstack_double;
