// The function app's own storage account: the Functions host's storage (timer leases,
// queue-trigger bookkeeping), the backup queue and job-record table of the app
// (AzureWebJobsStorage), and the blob container Flex Consumption deploys the app package
// from. Shared keys are off: the runtime and the app reach it with the managed identity.

@description('Name of the storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region of the storage account.')
param location string

@description('Tags applied to the storage account.')
param tags object = {}

@description('Blob container that holds the app package Flex Consumption runs from.')
param deploymentContainerName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:A Flex Consumption app without VNet integration reaches its own storage over the public endpoint; shared keys are off, so only Entra principals holding a data role get in. Add VNet integration and private endpoints to deny by default.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the public endpoint serves the function app; anonymous and shared-key access are both off.
  // checkov:skip=CKV_AZURE_206:The account holds transient queue messages, timer leases and job records; the backups themselves and their manifests live on the SMB share, so zone redundancy is enough and works in every region.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

@description('Resource id of the storage account.')
output id string = storage.id

@description('Name of the storage account: the value of AzureWebJobsStorage__accountName.')
output name string = storage.name

@description('Blob endpoint of the storage account.')
output blobEndpoint string = storage.properties.primaryEndpoints.blob

@description('Queue endpoint of the storage account.')
output queueEndpoint string = storage.properties.primaryEndpoints.queue

@description('Table endpoint of the storage account.')
output tableEndpoint string = storage.properties.primaryEndpoints.table
