//! What the running configuration offers rules (PURE): the rule settings `setting(...)` reads and
//! the webhook target names actions may name, and whether they come from a known configuration.

use super::compile::RuleSettings;
use std::collections::BTreeSet;

/// The configuration as rules see it. Loading and linting a rule set takes one; a configuration
/// reload hands the rules a new one ([`super::Rules::reconfigure`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleEnv {
    /// `[rule_settings]`: what `setting(name)` answers.
    pub settings: RuleSettings,
    /// The names of the `[webhooks.NAME]` targets.
    pub webhook_targets: BTreeSet<String>,
    /// Whether these come from a configuration file (`serve`, `check --config`): a target or
    /// setting a rule names but the configuration lacks is then an error, otherwise a warning.
    pub config_known: bool,
}

impl RuleEnv {
    /// Settings only, from no configuration file (dry runs, tests).
    pub fn with_settings(settings: RuleSettings) -> RuleEnv {
        RuleEnv {
            settings,
            ..RuleEnv::default()
        }
    }
}
