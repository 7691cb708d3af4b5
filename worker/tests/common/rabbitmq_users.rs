//! A RabbitMQ user of its own for tests that change a worker's AMQP password: created with full
//! rights on the default vhost through the management API, its password changed and restored,
//! its connections closed, then deleted. The stack's own user is never touched.

use bucket_av_testing::Stack;

pub struct RabbitUser {
    management: String,
    admin: (String, String),
    pub name: String,
    http: reqwest::Client,
}

impl RabbitUser {
    pub async fn create(stack: &Stack, name: &str, password: &str) -> Self {
        let user = Self {
            management: stack.var("BAVS_RABBITMQ_MANAGEMENT_URL").trim_end_matches('/').to_owned(),
            admin: (stack.var("BAVS_RABBITMQ_USER").to_owned(), stack.var("BAVS_RABBITMQ_PASSWORD").to_owned()),
            name: name.to_owned(),
            http: reqwest::Client::new(),
        };
        user.set_password(password).await;
        let permissions = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        user.call(reqwest::Method::PUT, &format!("/api/permissions/%2F/{name}"), Some(permissions)).await;
        user
    }

    /// The stack's AMQP URL with this user's credentials instead of the stack's.
    pub fn amqp_url(&self, stack: &Stack, password: &str) -> String {
        let url = stack.var("BAVS_AMQP_URL");
        let host = url.rsplit_once('@').expect("the stack's AMQP URL carries credentials").1;
        format!("amqp://{}:{password}@{host}", self.name)
    }

    pub async fn set_password(&self, password: &str) {
        let body = serde_json::json!({"password": password, "tags": ""});
        self.call(reqwest::Method::PUT, &format!("/api/users/{}", self.name), Some(body)).await;
    }

    /// Closes every connection of this user, as a broker restart or a network cut would: the
    /// client has to log in again.
    pub async fn close_connections(&self) -> usize {
        let connections = self.call(reqwest::Method::GET, "/api/connections", None).await;
        let names: Vec<String> = connections
            .as_array()
            .expect("a list of connections")
            .iter()
            .filter(|connection| connection["user"] == self.name.as_str())
            .filter_map(|connection| connection["name"].as_str().map(str::to_owned))
            .collect();
        for name in &names {
            let path = format!("/api/connections/{}", bucket_av_core::percent_encode(name, b""));
            self.call(reqwest::Method::DELETE, &path, None).await;
        }
        names.len()
    }

    pub async fn delete(self) {
        self.call(reqwest::Method::DELETE, &format!("/api/users/{}", self.name), None).await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.management))
            .basic_auth(&self.admin.0, Some(&self.admin.1));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.unwrap_or_else(|error| panic!("RabbitMQ management {method} {path}: {error}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "RabbitMQ management {method} {path} answered {status}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}
