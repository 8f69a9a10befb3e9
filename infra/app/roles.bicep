// Role assignments. The app's managed identity gets exactly these five data roles and no
// control-plane role:
//
//   Key Vault Reader                 vault      read the public encryption certificate
//                                               (BACKUP_ENCRYPTION_CERT); no secret values
//   Key Vault Secrets User           secret(s)  the share password secret, for the
//                                               BACKUP_SHARE_PASSWORD Key Vault reference,
//                                               and in legacy mode the key secret; nothing else
//   Storage Queue Data Contributor   account    the backup queue, the Functions queue trigger
//   Storage Table Data Contributor   account    the job-record table
//   Storage Blob Data Owner          account    the Functions host (timer leases, keys) and the
//                                               Flex Consumption deployment container
//
// Why not Key Vault Certificate User, nor Secrets User on the whole vault: both include
// secrets/getSecret on every secret, and the certificate's secret IS the PFX with the private
// key. A backup only needs the public certificate; the PFX is for recovery, by an operator
// (docs/KEYVAULT.md). So the app can read no private key, whatever it runs.
//
// Optionally the deploying operator gets the Key Vault officer roles needed to import the
// certificate; that is a person, not the app.
// Names come from guid() over scope, principal and role, so a redeployment is idempotent.

@description('Object id of the app\'s user-assigned managed identity.')
param principalId string

@description('Name of the Key Vault in this resource group.')
param keyVaultName string

@description('Name of the share password secret in the Key Vault.')
param sharePasswordSecretName string

@description('Name of the legacy key secret in the Key Vault; empty in certificate mode.')
param legacyEncryptionKeySecretName string = ''

@description('Name of the app\'s storage account in this resource group.')
param storageAccountName string

@description('Object id of an operator (user or group) who imports the certificate; empty for none.')
param operatorPrincipalId string = ''

@description('Principal type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

// Built-in role definition ids (the same in every tenant).
var roleIds = {
  keyVaultReader: '21090545-7ca7-4776-b22c-e363652d74d2'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  keyVaultCertificatesOfficer: 'a4417e6f-fecd-4de8-b567-7b0420556985'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource sharePasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: sharePasswordSecretName
}

resource legacyEncryptionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = if (!empty(legacyEncryptionKeySecretName)) {
  parent: vault
  name: legacyEncryptionKeySecretName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appKeyVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roleIds.keyVaultReader)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultReader)
  }
}

resource appSharePasswordSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(sharePasswordSecret.id, principalId, roleIds.keyVaultSecretsUser)
  scope: sharePasswordSecret
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
  }
}

resource appLegacyKeySecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(legacyEncryptionKeySecretName)) {
  name: guid(legacyEncryptionKeySecret.id, principalId, roleIds.keyVaultSecretsUser)
  scope: legacyEncryptionKeySecret
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
  }
}

resource appQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
  }
}

resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
  }
}

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
  }
}

resource operatorCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roleIds.keyVaultCertificatesOfficer)
  scope: vault
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultCertificatesOfficer)
  }
}

resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roleIds.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)
  }
}
