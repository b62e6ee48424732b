use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What ElevenLabs' post-call analysis says about a finished call: kept as the Call's
/// outcome so a dispatcher can see whether the driver acknowledged the violation.
/// Every field may be missing; `data_collection` maps each configured item to its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOutcome {
    /// `success`, `failure` or `unknown` (ElevenLabs' evaluation of the call).
    pub call_successful: Option<String>,
    /// ElevenLabs' `transcript_summary`.
    pub summary: Option<String>,
    /// `data_collection_results` unwrapped: item name → its value.
    #[serde(default)]
    pub data_collection: BTreeMap<String, serde_json::Value>,
    pub termination_reason: Option<String>,
    pub duration_secs: Option<i64>,
}
