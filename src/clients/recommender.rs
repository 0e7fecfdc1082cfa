//! The recommender (Gorse-compatible): `GET {base}/api/recommend/{user_id}?n=N&offset=O`
//! answers a JSON array of item ids; ours are post UUIDs.

use std::time::Duration;

use reqwest::Method;
use url::Url;
use uuid::Uuid;

use super::http::{ClientError, TracedClient};

#[derive(Clone)]
pub struct RecommenderClient {
    http: TracedClient,
    base: Url,
    timeout: Duration,
}

impl RecommenderClient {
    pub fn new(http: TracedClient, base: Url, timeout: Duration) -> Self {
        Self {
            http,
            base,
            timeout,
        }
    }

    /// Up to `n` post ids for the user, from `offset`. Ids that are not UUIDs are skipped.
    pub async fn recommend(
        &self,
        user: Uuid,
        n: u32,
        offset: u32,
    ) -> Result<Vec<Uuid>, ClientError> {
        let mut url = self.base.clone();
        let path = format!(
            "{}/api/recommend/{}",
            url.path().trim_end_matches('/'),
            user
        );
        url.set_path(&path);
        url.query_pairs_mut()
            .append_pair("n", &n.to_string())
            .append_pair("offset", &offset.to_string());
        let request = self.http.request(Method::GET, url).timeout(self.timeout);
        let ids: Vec<String> = self.http.get_json(request, Some("recommender")).await?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::try_parse(id).ok())
            .collect())
    }
}
