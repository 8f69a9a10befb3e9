// Key Vault in RBAC mode. It holds:
// - the share password, as a secret written here from a secure parameter; the app reads it
//   through a Key Vault reference in BACKUP_SHARE_PASSWORD;
// - in legacy mode (1811 and older) only, the symmetric key, also from a secure parameter;
// - the backup encryption certificate, which ARM cannot create: operators import it after
//   the deployment (docs/DEPLOY.md), under the name passed as encryptionCertificateName.

@description('Name of the Key Vault (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region of the Key Vault.')
param location string

@description('Tags applied to the Key Vault.')
param tags object = {}

@description('Name of the secret that holds the share password.')
param sharePasswordSecretName string

@description('Password of the account that writes to the backup share.')
@secure()
param sharePassword string

@description('Name of the secret that holds the legacy encryption key (legacy mode only).')
param legacyEncryptionKeySecretName string = 'backup-legacy-key'

@description('Legacy mode (1811 and older): true stores legacyEncryptionKey as a secret. A separate flag, so that no output reads the secure parameter.')
param legacyMode bool = false

@description('Legacy mode (1811 and older) only: the base64 symmetric key. Ignored unless legacyMode.')
@secure()
param legacyEncryptionKey string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:Key Vault references and certificate reads come from the function app's outbound addresses, which a Flex Consumption app without VNet integration does not own; a firewall would break them. Access is RBAC-only; add VNet integration and a private endpoint to close it.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: a function app without VNet integration reaches the vault over its public endpoint.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource sharePasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:An expiry date on the share password would stop every backup when it passes; its lifetime is the share owner's policy, rotated by writing a new version (the app's reference carries no version, so it follows).
  parent: vault
  name: sharePasswordSecretName
  properties: {
    value: sharePassword
    contentType: 'text/plain'
  }
}

resource legacyEncryptionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (legacyMode) {
  parent: vault
  name: legacyEncryptionKeySecretName
  properties: {
    // checkov:skip=CKV_AZURE_41:An expiry date on the key would stop every backup when it passes; the legacy key is retired by switching to certificate mode, not by expiry.
    // checkov:skip=CKV_AZURE_114:contentType is set just below; checkov does not read the body of a conditional (if) resource.
    value: legacyEncryptionKey
    contentType: 'text/plain'
  }
}

@description('Resource id of the Key Vault.')
output id string = vault.id

@description('Name of the Key Vault.')
output name string = vault.name

@description('URI of the Key Vault, ending with a slash.')
output uri string = vault.properties.vaultUri

@description('Versionless URI of the share password secret, for the Key Vault reference.')
output sharePasswordSecretUri string = sharePasswordSecret.properties.secretUri

@description('Name of the share password secret (the scope of the app\'s Key Vault Secrets User role).')
output sharePasswordSecretName string = sharePasswordSecret.name

@description('Name of the legacy key secret; empty in certificate mode.')
output legacyEncryptionKeySecretName string = legacyMode ? legacyEncryptionKeySecretName : ''

@description('Versionless URI of the legacy key secret (BACKUP_ENCRYPTION_KEY); empty in certificate mode.')
output legacyEncryptionKeySecretUri string = legacyMode ? legacyEncryptionKeySecret.properties.secretUri : ''
