//! Writes of a merchant's webhook endpoint racing each other.

use super::*;

/// `PUT` (two URLs) and `DELETE` of a merchant's webhook endpoint at once. Only single writes
/// touch the endpoint item and no transaction ever holds it, so the layer has nothing to refuse
/// here (this test does not require a refusal): the point is that each answer is 200 or 204 and
/// the stored endpoint, if any, is one `PUT`'s URL with that same `PUT`'s secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_endpoint_writes_race() {
    let race = Race::new("webhook endpoint PUT vs PUT vs DELETE").await;
    let m = race.merchant().await;
    let seal = SecretSeal::from_issuer_key(&race.ctx.master);
    let urls = ["http://127.0.0.1:9/one", "http://127.0.0.1:9/two"];
    race.single_writes(8, async |round| {
        let put = |i: usize| {
            let race = &race;
            let (key, url) = (&m.key, urls[i]);
            async move {
                stagger(round, i).await;
                race.call(
                    Function::PaymentRequest,
                    "PUT",
                    "/v1/webhook-endpoint",
                    key,
                    None,
                    Some(json!({ "url": url })),
                )
                .await
            }
        };
        let (one, two, gone) = tokio::join!(put(0), put(1), async {
            stagger(round, 2).await;
            race.call(
                Function::PaymentRequest,
                "DELETE",
                "/v1/webhook-endpoint",
                &m.key,
                None,
                None,
            )
            .await
        });
        within("PUT", &one, &[(200, "")]);
        within("PUT", &two, &[(200, "")]);
        within("DELETE", &gone, &[(204, "")]);
        let stored = race
            .ctx
            .store
            .endpoint(&m.id)
            .await
            .expect("read the endpoint");
        if let Some(e) = stored {
            let secret = seal
                .open(&e.sealed_secret, m.id.as_str())
                .expect("the stored secret opens");
            let from = [&one, &two]
                .into_iter()
                .find(|r| r.str("url") == e.url.as_str())
                .expect("the stored URL is one PUT's");
            assert_eq!(
                from.str("secret"),
                secret.as_str(),
                "URL and secret of one PUT"
            );
        }
    })
    .await;
}
