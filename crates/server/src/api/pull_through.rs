//! `/v2/` reads of remote and virtual repositories: the proxy fills the
//! cache, then the same handlers as for local repositories answer.

use axum::extract::Request;
use berth_meta::StoredManifest;
use berth_oci::{Endpoint, Reference, RepoName};

use super::{blobs, listing, manifests, ApiError, ApiResult};
use crate::app::App;
use crate::proxy::routes::{Remote, Route};
use crate::proxy::{BlobAnswer, ProxyError};
use crate::registry::RegistryError;

/// One place a read may be answered from, in the order tried.
enum Member<'a> {
    Local(&'a RepoName),
    Remote { remote: &'a Remote, any_host: bool },
}

fn members(route: &Route) -> Vec<Member<'_>> {
    match route {
        Route::Local(repo) => vec![Member::Local(repo)],
        Route::Remote(remote) => vec![Member::Remote {
            remote,
            any_host: false,
        }],
        Route::AnyHost(remote) => vec![Member::Remote { remote, any_host: true }],
        Route::Virtual { members: all, .. } => all.iter().flat_map(members).collect(),
    }
}

/// Whether an error means "not here" (the next member may have it) rather
/// than a failure to report.
fn is_absent(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::Registry(RegistryError::ManifestUnknown | RegistryError::NameUnknown | RegistryError::BlobUnknown)
    )
}

/// Answers a read of `route` (not a local repository: those never get here).
pub async fn serve(app: &App, endpoint: Endpoint, route: Route, req: Request) -> ApiResult {
    let registry = &app.registry;
    let members = members(&route);
    let several = members.len() > 1;
    match endpoint {
        Endpoint::GetManifest { reference, head, .. } => {
            let mut failure = None;
            for member in &members {
                match find_manifest(app, member, &reference).await {
                    Ok(Some((repo, manifest))) => {
                        return manifests::serve_manifest(registry, repo, &reference, manifest, head, &req)
                    }
                    Ok(None) => {}
                    // A virtual repository tries its next member when one fails.
                    Err(e) if several => failure = Some(e),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(match failure {
                Some(e) => e.into(),
                None => absent_manifest(app, &members).await.into(),
            })
        }
        Endpoint::GetBlob { digest, head, .. } => {
            let mut failure = None;
            for member in &members {
                let answer = match member {
                    Member::Local(repo) => match registry.has_blob(repo, &digest).await {
                        Ok(true) => Ok(BlobAnswer::Cached((*repo).clone())),
                        Ok(false) => continue,
                        Err(e) => Err(e.into()),
                    },
                    Member::Remote { remote, any_host } => {
                        // A cached blob is served after one read of the
                        // metadata store, as a pushed one is; a miss goes to
                        // the proxy, which may find it under another name.
                        if !head && !registry.redirects_blobs() {
                            match registry
                                .open_blob(&remote.repo, &digest, blobs::wanted_range(&req))
                                .await
                            {
                                Ok(blob) => {
                                    app.proxy.count_hit();
                                    return Ok(blobs::blob_body(&digest, blob.size, blob.range, blob.body));
                                }
                                Err(RegistryError::BlobUnknown) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        app.proxy
                            .blob(remote, *any_host, &digest, head, blobs::wanted_range(&req))
                            .await
                    }
                };
                match answer {
                    Ok(BlobAnswer::Cached(repo)) => return blobs::get_blob(registry, repo, digest, head, req).await,
                    Ok(BlobAnswer::Size(size)) => return Ok(blobs::blob_size(&digest, size)),
                    Ok(BlobAnswer::Streaming { size, range, body, .. }) => {
                        return Ok(blobs::blob_body(&digest, size, range, body))
                    }
                    Err(e) if is_absent(&e) => {}
                    Err(e) if several => failure = Some(e),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(match failure {
                Some(e) => e.into(),
                None => RegistryError::BlobUnknown.into(),
            })
        }
        Endpoint::ListTags { repo } => {
            let mut tags = std::collections::BTreeSet::new();
            let mut found = false;
            for member in &members {
                let listed = match member {
                    Member::Local(local) => local_tags(app, local).await,
                    Member::Remote { remote, any_host } => app.proxy.tags(remote, *any_host).await,
                };
                match listed {
                    Ok(listed) => {
                        found = true;
                        tags.extend(listed);
                    }
                    Err(e) if is_absent(&e) => {}
                    Err(e) if several => tracing::warn!(error = %e, "a member of a virtual repository failed"),
                    Err(e) => return Err(e.into()),
                }
            }
            if !found {
                return Err(RegistryError::NameUnknown.into());
            }
            listing::list_gathered_tags(&repo, tags.into_iter().collect(), &req)
        }
        Endpoint::ListReferrers { digest, .. } => {
            // A virtual repository answers from its first member.
            match members.first() {
                Some(Member::Remote { remote, any_host }) => {
                    let extra = app.proxy.fill_referrers(remote, *any_host, &digest).await?;
                    listing::list_referrers_with(registry, remote.repo.clone(), digest, req, extra).await
                }
                Some(Member::Local(repo)) => listing::list_referrers(registry, (*repo).clone(), digest, req).await,
                None => Err(RegistryError::NameUnknown.into()),
            }
        }
        Endpoint::Nameless(nameless) => {
            let absent = match first_repo(&members) {
                Some(repo) => registry.absent(&repo, nameless.resource).await,
                None => RegistryError::NameUnknown,
            };
            Err(ApiError::nameless(absent, &nameless.cause))
        }
        // Writes were routed to a local repository or refused before here.
        Endpoint::Base | Endpoint::Catalog => Err(RegistryError::NameUnknown.into()),
        _ => Err(RegistryError::NameUnknown.into()),
    }
}

/// Where `member` holds the manifest `reference` names, after filling the
/// cache from its upstream.
/// The manifest at `reference` in `member` (a remote one filled first), and
/// the repository holding it.
async fn find_manifest<'a>(
    app: &App,
    member: &Member<'a>,
    reference: &Reference,
) -> Result<Option<(&'a RepoName, StoredManifest)>, ProxyError> {
    let repo = match member {
        Member::Local(repo) => *repo,
        Member::Remote { remote, any_host } => {
            // A cache hit comes with the manifest: no second read.
            if let Some(cached) = app.proxy.fill_manifest(remote, *any_host, reference).await? {
                return Ok(Some((&remote.repo, cached)));
            }
            &remote.repo
        }
    };
    Ok(app.registry.find_manifest(repo, reference).await?.map(|m| (repo, m)))
}

async fn absent_manifest(app: &App, members: &[Member<'_>]) -> RegistryError {
    match first_repo(members) {
        Some(repo) => app.registry.absent(&repo, berth_oci::Resource::Manifest).await,
        None => RegistryError::NameUnknown,
    }
}

/// The repository of the first member (none for a virtual repository
/// whose members' names are all invalid for this request).
fn first_repo(members: &[Member<'_>]) -> Option<RepoName> {
    match members.first()? {
        Member::Local(repo) => Some((*repo).clone()),
        Member::Remote { remote, .. } => Some(remote.repo.clone()),
    }
}

async fn local_tags(app: &App, repo: &RepoName) -> Result<Vec<String>, ProxyError> {
    Ok(app.registry.all_tags(repo).await?)
}
