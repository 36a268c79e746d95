//! The normalized, language-neutral call outcome, mapped from Udesk's `call_result` strings.

use serde::{Deserialize, Serialize};

/// What happened to a call, whatever language the tenant's `call_result` arrives in.
///
/// Udesk sends `call_result` as a localized string: the Japanese document lists one set, Chinese
/// tenants send another (same order). Rules can compare against `outcome` and serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    CustomerNoAnswer,
    CustomerAnswered,
    Busy,
    PhoneOffline,
    AgentNoAnswer,
    AgentRejected,
    AgentAnswered,
    CustomerHungUpImmediately,
    CustomerHungUp,
    QueueTimeout,
    QueueAbandoned,
    NoQueueSelected,
}

/// Every outcome with its Japanese and Chinese `call_result` spellings, in Udesk's documented order.
const TABLE: [(Outcome, &str, &str); 12] = [
    (Outcome::CustomerNoAnswer, "顧客未応答", "客户未接"),
    (Outcome::CustomerAnswered, "顧客応答", "客户接听"),
    (Outcome::Busy, "話中", "话机占线"),
    (Outcome::PhoneOffline, "電話オフライン", "话机离线"),
    (Outcome::AgentNoAnswer, "オペレーター未応答", "客服未接"),
    (Outcome::AgentRejected, "オペレーター拒否", "客服拒接"),
    (Outcome::AgentAnswered, "オペレーター応答", "客服接听"),
    (
        Outcome::CustomerHungUpImmediately,
        "顧客即時切断",
        "客户速挂",
    ),
    (Outcome::CustomerHungUp, "顧客切断", "客户挂机"),
    (Outcome::QueueTimeout, "待機タイムアウト", "排队超时"),
    (Outcome::QueueAbandoned, "待機放棄", "放弃排队"),
    (Outcome::NoQueueSelected, "キュー未選択", "未选择队列"),
];

impl Outcome {
    /// All outcomes, in Udesk's documented order.
    pub const ALL: [Outcome; 12] = {
        let mut all = [Outcome::Busy; 12];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// Maps a raw `call_result` (Japanese, Chinese, or the normalized name itself) to an outcome.
    /// Surrounding whitespace is ignored; anything else unknown gives `None`.
    pub fn from_call_result(raw: &str) -> Option<Outcome> {
        let raw = raw.trim();
        TABLE
            .iter()
            .find(|(outcome, ja, zh)| raw == *ja || raw == *zh || raw == outcome.as_str())
            .map(|(outcome, _, _)| *outcome)
    }

    /// The normalized name, as rules and the API see it (e.g. `queue_abandoned`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::CustomerNoAnswer => "customer_no_answer",
            Outcome::CustomerAnswered => "customer_answered",
            Outcome::Busy => "busy",
            Outcome::PhoneOffline => "phone_offline",
            Outcome::AgentNoAnswer => "agent_no_answer",
            Outcome::AgentRejected => "agent_rejected",
            Outcome::AgentAnswered => "agent_answered",
            Outcome::CustomerHungUpImmediately => "customer_hung_up_immediately",
            Outcome::CustomerHungUp => "customer_hung_up",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::QueueAbandoned => "queue_abandoned",
            Outcome::NoQueueSelected => "no_queue_selected",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_and_chinese_spellings_map_to_the_same_outcome() {
        for (outcome, ja, zh) in TABLE {
            assert_eq!(Outcome::from_call_result(ja), Some(outcome), "{ja}");
            assert_eq!(Outcome::from_call_result(zh), Some(outcome), "{zh}");
            assert_eq!(Outcome::from_call_result(outcome.as_str()), Some(outcome));
        }
        assert_eq!(
            Outcome::from_call_result(" 待機放棄 "),
            Some(Outcome::QueueAbandoned)
        );
        assert_eq!(
            Outcome::from_call_result("放弃排队"),
            Some(Outcome::QueueAbandoned)
        );
        assert_eq!(Outcome::from_call_result("something else"), None);
    }

    #[test]
    fn serde_name_matches_as_str() {
        for outcome in Outcome::ALL {
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(json, outcome.as_str());
        }
    }
}
