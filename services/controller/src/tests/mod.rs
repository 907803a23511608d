//! Scenario and property tests.

mod builders;
mod data_scenarios;
mod failing_scenarios;
mod lifecycle_scenarios;
mod oracle_scenarios;
mod oracles;
mod properties;
mod rollout_scenarios;
mod units;
