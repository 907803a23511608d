//! Scenario and property tests.

mod builders;
mod data_scenarios;
mod failing_scenarios;
mod oracle_scenarios;
mod properties;
mod rollout_scenarios;
mod units;
