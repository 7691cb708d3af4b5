//! MinIO's built-in identity management through the admin API: canned (IAM) policies, attaching
//! them to users and groups, and reading who has one. Users and groups themselves can be created
//! and removed too, which tests need. Request bodies MinIO expects sealed (attach, detach, users)
//! are encrypted with the secret key; it must not log or report any secret.

use bucket_av_core::Redacted;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::AdminClient;
use crate::{Error, Result, encrypt};

const CREATE_POLICY: &str = "admin:CreatePolicy";
const DELETE_POLICY: &str = "admin:DeletePolicy";
const GET_POLICY: &str = "admin:GetPolicy";
const ATTACH_POLICY: &str = "admin:AttachUserOrGroupPolicy";
const LIST_POLICY_ENTITIES: &str = "admin:ListUserPolicies";
const GET_USER: &str = "admin:GetUser";
const CREATE_USER: &str = "admin:CreateUser";
const DELETE_USER: &str = "admin:DeleteUser";
const ADD_TO_GROUP: &str = "admin:AddUserToGroup";
const REMOVE_FROM_GROUP: &str = "admin:RemoveUserFromGroup";

/// A MinIO user or group of the built-in identity provider.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    User(String),
    Group(String),
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Self::User(name) | Self::Group(name) => name,
        }
    }

    /// `user` or `group`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Group(_) => "group",
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// The users and groups a canned policy is attached to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyEntities {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl PolicyEntities {
    /// Every user and group, users first.
    pub fn principals(&self) -> Vec<Principal> {
        let users = self.users.iter().cloned().map(Principal::User);
        users.chain(self.groups.iter().cloned().map(Principal::Group)).collect()
    }
}

#[derive(Serialize)]
struct PolicyAssociationReq<'a> {
    policies: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
}

#[derive(Deserialize)]
struct PolicyInfo {
    #[serde(rename = "Policy")]
    policy: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PolicyEntitiesResult {
    #[serde(default)]
    policy_mappings: Option<Vec<PolicyMapping>>,
}

#[derive(Deserialize)]
struct PolicyMapping {
    // MinIO writes `null` for an empty list.
    #[serde(default)]
    users: Option<Vec<String>>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserInfo {
    #[serde(default)]
    member_of: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupAddRemove<'a> {
    group: &'a str,
    members: &'a [&'a str],
    is_remove: bool,
}

impl AdminClient {
    /// Creates or replaces the canned policy `name` with `document` (an IAM policy JSON).
    pub async fn put_canned_policy(&self, name: &str, document: &serde_json::Value) -> Result<()> {
        let operation = "add-canned-policy";
        let body = serde_json::to_vec(document).map_err(|source| Error::ParseJson { operation, source })?;
        let query = format!("name={}", encode(name));
        self.send(Method::PUT, "/add-canned-policy", &query, body, operation, CREATE_POLICY).await?;
        Ok(())
    }

    /// The document of the canned policy `name`, or `None` when MinIO has no such policy.
    pub async fn canned_policy(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let operation = "info-canned-policy";
        let query = format!("name={}&v=2", encode(name));
        let response =
            match self.send(Method::GET, "/info-canned-policy", &query, Vec::new(), operation, GET_POLICY).await {
                Err(error) if is_code(&error, "XMinioAdminNoSuchPolicy") => return Ok(None),
                other => other?,
            };
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        let info: PolicyInfo =
            serde_json::from_slice(&body).map_err(|source| Error::ParseJson { operation, source })?;
        Ok(Some(info.policy))
    }

    /// Deletes the canned policy `name`; one that does not exist counts as deleted (MinIO
    /// answers the same). MinIO refuses to delete a policy that is still attached
    /// (`XMinioIAMPolicyInUse`): detach it first.
    pub async fn delete_canned_policy(&self, name: &str) -> Result<()> {
        let operation = "remove-canned-policy";
        let query = format!("name={}", encode(name));
        match self.send(Method::DELETE, "/remove-canned-policy", &query, Vec::new(), operation, DELETE_POLICY).await {
            Ok(_) => Ok(()),
            Err(error) if is_code(&error, "XMinioAdminNoSuchPolicy") => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Attaches the canned policy to a user or group, beside the policies it has; `false` when
    /// it was attached already. [`Error::NotFound`] when the user or group does not exist.
    pub async fn attach_policy(&self, policy: &str, principal: &Principal) -> Result<bool> {
        self.associate(true, policy, principal).await
    }

    /// Detaches the canned policy from a user or group; `false` when it was not attached (or
    /// the user or group no longer exists).
    pub async fn detach_policy(&self, policy: &str, principal: &Principal) -> Result<bool> {
        match self.associate(false, policy, principal).await {
            Err(Error::NotFound { .. }) => Ok(false),
            other => other,
        }
    }

    async fn associate(&self, attach: bool, policy: &str, principal: &Principal) -> Result<bool> {
        let (path, operation) = if attach {
            ("/idp/builtin/policy/attach", "attach policy")
        } else {
            ("/idp/builtin/policy/detach", "detach policy")
        };
        let request = PolicyAssociationReq {
            policies: [policy],
            user: matches!(principal, Principal::User(_)).then_some(principal.name()),
            group: matches!(principal, Principal::Group(_)).then_some(principal.name()),
        };
        let plain = serde_json::to_vec(&request).map_err(|source| Error::ParseJson { operation, source })?;
        let body = encrypt::encrypt_off_runtime(self.secret_key().expose(), &plain).await;
        match self.send(Method::POST, path, "", body, operation, ATTACH_POLICY).await {
            Ok(_) => Ok(true),
            Err(error) if is_code(&error, "XMinioAdminPolicyChangeAlreadyApplied") => Ok(false),
            Err(error) if is_code(&error, "XMinioAdminNoSuchUser") || is_code(&error, "XMinioAdminNoSuchGroup") => {
                Err(Error::NotFound { key: principal.to_string(), message: format!("MinIO has no {principal}") })
            }
            Err(error) if is_code(&error, "XMinioAdminNoSuchPolicy") => Err(Error::NotFound {
                key: format!("policy {policy}"),
                message: format!("MinIO has no policy {policy}"),
            }),
            Err(other) => Err(other),
        }
    }

    /// The users and groups the canned policy `policy` is attached to (empty when none, or when
    /// the policy does not exist).
    pub async fn policy_entities(&self, policy: &str) -> Result<PolicyEntities> {
        let operation = "policy entities";
        let query = format!("policy={}", encode(policy));
        let response = self
            .send(Method::GET, "/idp/builtin/policy-entities", &query, Vec::new(), operation, LIST_POLICY_ENTITIES)
            .await?;
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        let plain = encrypt::decrypt_off_runtime(self.secret_key().expose(), &body).await?;
        let result: PolicyEntitiesResult =
            serde_json::from_slice(&plain).map_err(|source| Error::ParseJson { operation, source })?;
        let mut entities = PolicyEntities::default();
        for mapping in result.policy_mappings.unwrap_or_default() {
            entities.users.extend(mapping.users.unwrap_or_default());
            entities.groups.extend(mapping.groups.unwrap_or_default());
        }
        entities.users.sort();
        entities.users.dedup();
        entities.groups.sort();
        entities.groups.dedup();
        Ok(entities)
    }

    /// The groups the built-in user `access_key` is a member of; `None` when MinIO has no such
    /// user (the root user, a service account, or a user of another identity provider).
    pub async fn user_groups(&self, access_key: &str) -> Result<Option<Vec<String>>> {
        let operation = "user-info";
        let query = format!("accessKey={}", encode(access_key));
        let response = match self.send(Method::GET, "/user-info", &query, Vec::new(), operation, GET_USER).await {
            Err(error) if is_code(&error, "XMinioAdminNoSuchUser") => return Ok(None),
            other => other?,
        };
        let body = response.bytes().await.map_err(|source| Error::ReadResponse { operation, source })?;
        let info: UserInfo = serde_json::from_slice(&body).map_err(|source| Error::ParseJson { operation, source })?;
        Ok(Some(info.member_of.unwrap_or_default()))
    }

    /// Creates (or resets the secret of) an enabled built-in user without policies.
    pub async fn add_user(&self, access_key: &str, secret_key: &Redacted) -> Result<()> {
        let operation = "add-user";
        let plain = serde_json::json!({"secretKey": secret_key.expose(), "status": "enabled"}).to_string();
        let body = encrypt::encrypt_off_runtime(self.secret_key().expose(), plain.as_bytes()).await;
        let query = format!("accessKey={}", encode(access_key));
        self.send(Method::PUT, "/add-user", &query, body, operation, CREATE_USER).await?;
        Ok(())
    }

    /// Removes a built-in user; `false` when there was none.
    pub async fn remove_user(&self, access_key: &str) -> Result<bool> {
        let operation = "remove-user";
        let query = format!("accessKey={}", encode(access_key));
        match self.send(Method::DELETE, "/remove-user", &query, Vec::new(), operation, DELETE_USER).await {
            Ok(_) => Ok(true),
            Err(error) if is_code(&error, "XMinioAdminNoSuchUser") => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Adds users to a group, creating the group when it does not exist.
    pub async fn add_group_members(&self, group: &str, members: &[&str]) -> Result<()> {
        let operation = "update-group-members";
        let request = GroupAddRemove { group, members, is_remove: false };
        let body = serde_json::to_vec(&request).map_err(|source| Error::ParseJson { operation, source })?;
        self.send(Method::PUT, "/update-group-members", "", body, operation, ADD_TO_GROUP).await?;
        Ok(())
    }

    /// Removes users from a group; with no users, removes the group itself (it must be empty).
    /// `false` when there was no such group.
    pub async fn remove_group_members(&self, group: &str, members: &[&str]) -> Result<bool> {
        let operation = "update-group-members";
        let request = GroupAddRemove { group, members, is_remove: true };
        let body = serde_json::to_vec(&request).map_err(|source| Error::ParseJson { operation, source })?;
        match self.send(Method::PUT, "/update-group-members", "", body, operation, REMOVE_FROM_GROUP).await {
            Ok(_) => Ok(true),
            Err(error) if is_code(&error, "XMinioAdminNoSuchGroup") => Ok(false),
            Err(other) => Err(other),
        }
    }
}

fn encode(value: &str) -> String {
    bucket_av_core::percent_encode(value, b"")
}

fn is_code(error: &Error, wanted: &str) -> bool {
    matches!(error, Error::Rejected { code, .. } if code == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn association_requests_name_exactly_one_principal() {
        let user = PolicyAssociationReq { policies: ["p"], user: Some("alice"), group: None };
        assert_eq!(serde_json::to_string(&user).unwrap(), r#"{"policies":["p"],"user":"alice"}"#);
        let group = PolicyAssociationReq { policies: ["p"], user: None, group: Some("staff") };
        assert_eq!(serde_json::to_string(&group).unwrap(), r#"{"policies":["p"],"group":"staff"}"#);
    }

    #[test]
    fn minio_null_lists_read_as_empty() {
        let text =
            r#"{"timestamp":"2026-11-29T05:00:00Z","policyMappings":[{"policy":"p","users":null,"groups":["g"]}]}"#;
        let result: PolicyEntitiesResult = serde_json::from_str(text).unwrap();
        let mapping = &result.policy_mappings.unwrap()[0];
        assert_eq!((mapping.users.clone(), mapping.groups.clone()), (None, Some(vec!["g".to_owned()])));
    }

    #[test]
    fn principals_display_their_kind() {
        assert_eq!(Principal::User("alice".into()).to_string(), "user alice");
        assert_eq!(Principal::Group("staff".into()).to_string(), "group staff");
        let entities = PolicyEntities { users: vec!["a".into()], groups: vec!["g".into()] };
        assert_eq!(entities.principals(), [Principal::User("a".into()), Principal::Group("g".into())]);
    }
}
