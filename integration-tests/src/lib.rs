//! Test support for AutoCrane's end-to-end tests: helpers that locate and start the real binaries
//! and the real third-party tools the tests run against.
