//! [`Directory`]: merchants, their api keys and terminals' tokens.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use twochan_domain::{
    DomainError, MerchantId, Result, Timestamp, UniqueCode,
    crypto::SecretHash,
    ports::{Device, Directory, TerminalSession, Write},
};

use super::{DynamoStore, build_err, item_of, key, parse_item};
use crate::items::{
    ApiKeyItem, DeviceItem, MerchantItem, SK_API_KEY, SK_DEVICE, SK_MERCHANT, SK_TOKEN, TokenItem,
    api_key_pk, device_pk, merchant_pk, token_pk,
};

impl Directory for DynamoStore {
    async fn merchant_for_key(&self, key_hash: &SecretHash) -> Result<Option<MerchantId>> {
        let item: Option<ApiKeyItem> = self.get(api_key_pk(key_hash.as_str()), SK_API_KEY).await?;
        item.map(|i| {
            MerchantId::try_from(i.merchant_id)
                .map_err(|e| DomainError::Internal(format!("stored api key: {e}")))
        })
        .transpose()
    }

    async fn merchant_and_device(
        &self,
        key_hash: &SecretHash,
        code: &UniqueCode,
    ) -> Result<(Option<MerchantId>, Option<Device>)> {
        let (api_key, device) = self
            .get_two(
                (api_key_pk(key_hash.as_str()), SK_API_KEY),
                (device_pk(code.as_str()), SK_DEVICE),
            )
            .await?;
        let device = device.map(parse_item::<DeviceItem>).transpose()?;
        let merchant = api_key
            .map(parse_item::<ApiKeyItem>)
            .transpose()?
            .map(|i| {
                MerchantId::try_from(i.merchant_id)
                    .map_err(|e| DomainError::Internal(format!("stored api key: {e}")))
            })
            .transpose()?;
        Ok((merchant, device.map(Device::try_from).transpose()?))
    }

    async fn session_for_token(&self, token: &SecretHash) -> Result<Option<TerminalSession>> {
        let item: Option<TokenItem> = self.get(token_pk(token.as_str()), SK_TOKEN).await?;
        item.map(TerminalSession::try_from).transpose()
    }

    async fn put_merchant(
        &self,
        id: &MerchantId,
        key_hash: &SecretHash,
        at: Timestamp,
    ) -> Result<()> {
        let existing: Option<MerchantItem> =
            self.get(merchant_pk(id.as_str()), SK_MERCHANT).await?;
        let merchant = MerchantItem {
            pk: merchant_pk(id.as_str()),
            sk: SK_MERCHANT.into(),
            merchant_id: id.to_string(),
            key_hash: key_hash.as_str().into(),
            updated_at: at.millis(),
        };
        let api_key = ApiKeyItem {
            pk: api_key_pk(key_hash.as_str()),
            sk: SK_API_KEY.into(),
            merchant_id: id.to_string(),
        };
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item_of(&merchant)?))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            self.put_new(item_of(&api_key)?)?,
        ];
        if let Some(old) = existing {
            items.push(self.delete(key(api_key_pk(&old.key_hash), SK_API_KEY))?);
        }
        match self
            .transact("TransactWriteItems(put_merchant)", items)
            .await?
        {
            Write::Applied => Ok(()),
            Write::Conflict => Err(DomainError::Unavailable(
                "merchant changed concurrently".into(),
            )),
        }
    }
}
