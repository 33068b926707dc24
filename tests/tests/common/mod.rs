//! Helpers shared by the tests in this folder.
#![allow(dead_code)] // each test binary uses its own subset

pub mod auth;
