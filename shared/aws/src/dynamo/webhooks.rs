//! [`WebhookEndpoints`] and [`EventSources`]: a merchant's endpoint, and what an event is about.

use twochan_domain::{
    DomainError, MerchantId, Payment, PaymentId, RefundId, Result, Timestamp,
    ports::{EventSources, Payments, WebhookEndpoint, WebhookEndpoints},
    refund::Refund,
    webhook::WebhookUrl,
};

use super::{DynamoStore, is_rejection, item_of, key, parse_item, payment_in, sdk_error};
use crate::items::{
    RefundItem, SK_PAYMENT, SK_REFUND, SK_WEBHOOK, WebhookItem, merchant_pk, payment_pk,
    refund_slot_pk,
};

impl WebhookEndpoints for DynamoStore {
    async fn endpoint(&self, merchant: &MerchantId) -> Result<Option<WebhookEndpoint>> {
        let item: Option<WebhookItem> =
            self.get(merchant_pk(merchant.as_str()), SK_WEBHOOK).await?;
        item.map(|i| {
            Ok(WebhookEndpoint {
                // As stored; the sender checks it again against its own rules before each try.
                url: WebhookUrl::parse(&i.url, true)
                    .map_err(|e| DomainError::Internal(format!("stored webhook url: {e}")))?,
                sealed_secret: i.sealed_secret,
                set_at: Timestamp::from_millis(i.set_at),
            })
        })
        .transpose()
    }

    async fn put_endpoint(&self, merchant: &MerchantId, e: &WebhookEndpoint) -> Result<()> {
        let item = WebhookItem {
            pk: merchant_pk(merchant.as_str()),
            sk: SK_WEBHOOK.into(),
            url: e.url.as_str().into(),
            sealed_secret: e.sealed_secret.clone(),
            set_at: e.set_at.millis(),
        };
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&item)?))
            .send()
            .await
            .map_err(|e| sdk_error("PutItem(webhook)", e))?;
        Ok(())
    }

    async fn delete_endpoint(&self, merchant: &MerchantId) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(merchant_pk(merchant.as_str()), SK_WEBHOOK)))
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem(webhook)", e))?;
        Ok(())
    }
}

impl EventSources for DynamoStore {
    async fn event_subject(
        &self,
        payment: &PaymentId,
        refund: Option<&RefundId>,
    ) -> Result<(Option<Payment>, Option<Refund>)> {
        let Some(refund_id) = refund else {
            return Ok((self.payment(payment).await?, None));
        };
        let (p, r) = self
            .get_two(
                (payment_pk(payment), SK_PAYMENT),
                (refund_slot_pk(&refund_id.slot()), SK_REFUND),
            )
            .await?;
        let refund = r
            .filter(|i| !is_rejection(i))
            .map(|i| Refund::try_from(parse_item::<RefundItem>(i)?))
            .transpose()?
            .filter(|r| r.refund_id == *refund_id);
        Ok((payment_in(p, payment)?, refund))
    }
}
