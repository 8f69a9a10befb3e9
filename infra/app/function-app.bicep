// The Function App on a Flex Consumption plan, with every setting of the product brief.
//
// Why Flex Consumption: a backup may run 40 minutes. The classic Consumption plan stops a
// function after 10 minutes at most; Flex Consumption (like Elastic Premium) has no upper
// bound on functionTimeout for non-HTTP triggers (host.json sets it), scales to zero
// between backups instead of billing an always-ready Premium instance, runs Python on
// Linux, and supports VNet integration for shares that are only reachable privately.
// Backups run from the queue-triggered worker, never inside an HTTP request, so the
// 230-second HTTP response limit does not apply to them.

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region of the plan and the app.')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of the user-assigned managed identity (AZURE_CLIENT_ID).')
param identityClientId string

@description('Name of the app\'s storage account (AzureWebJobsStorage, identity-based).')
param storageAccountName string

@description('URL of the blob container Flex Consumption deploys the app package from.')
param deploymentContainerUrl string

@description('Name of the Application Insights component the app sends telemetry to.')
param applicationInsightsName string

@description('URI of the Key Vault, ending with a slash.')
param keyVaultUri string

@description('Versionless URI of the share password secret.')
param sharePasswordSecretUri string

@description('Python version of the app: 3.11 and 3.12 run azure-functions 1.x, 3.13 runs azure-functions 2.x under the azure-functions-runtime worker (requirements.txt selects by version).')
@allowed([
  '3.11'
  '3.12'
  '3.13'
])
param pythonVersion string = '3.11'

@description('Most instances the app scales out to (one backup per stamp runs at a time whatever this is).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance in MB. Backups stream in bounded segments, so 2048 is plenty.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Resource id of a subnet (delegated to Microsoft.App/environments) for VNet integration, when the share is reachable only privately; empty for none.')
param virtualNetworkSubnetId string = ''

@description('BACKUP_SHARE_PATH: UNC path of the share root with an FQDN or IP address, e.g. \\\\fileserver01.contoso.com\\AzSBackups.')
param sharePath string

@description('BACKUP_SHARE_PORT: SMB port of the share.')
param sharePort int = 445

@description('BACKUP_SHARE_REQUIRE_ENCRYPTION: refuse a share that does not offer SMB 3 encryption.')
param shareRequireEncryption bool = true

@description('BACKUP_SHARE_TIMEOUT_SECONDS: a share operation without progress for this long is a connectivity fault.')
param shareTimeoutSeconds int = 60

@description('BACKUP_SHARE_USERNAME: account that writes to the share, e.g. CONTOSO\\svc-azsbackup.')
param shareUsername string

@description('BACKUP_EXTERNAL_DOMAIN: external domain FQDN of the stamp (folder naming).')
param externalDomain string

@description('BACKUP_REGION: region name of the stamp (folder naming); not an Azure location.')
param stampRegion string

@description('BACKUP_SCALE_UNIT: scale-unit id when several instances share a region; empty for none.')
param scaleUnit string = ''

@description('Name of the encryption certificate in the Key Vault (BACKUP_ENCRYPTION_CERT points at it).')
param encryptionCertificateName string

@description('Legacy mode (1811 and older): versionless URI of the Key Vault secret holding the key; BACKUP_ENCRYPTION_KEY becomes it and BACKUP_ENCRYPTION_CERT empty. Empty: certificate mode.')
param legacyEncryptionKeySecretUri string = ''

@description('BACKUP_SOURCES: the sources to back up, as the JSON array of the brief.')
param backupSources array

@description('BACKUP_STAMPS: the fleet beside the stamp of the settings above (docs/FLEET.md); empty: that one stamp.')
param stamps array = []

@description('BACKUP_SCHEDULE: NCRONTAB expression of the backup timer.')
param backupSchedule string = '0 0 */12 * * *'

@description('BACKUP_SCHEDULER_ENABLED: false keeps the schedule but skips scheduled runs.')
param schedulerEnabled bool = true

@description('BACKUP_STALE_AFTER_HOURS: hours without a successful backup before "No successful backup" fires (1-48); 0 leaves the setting empty, so the app derives it from the schedule.')
@minValue(0)
@maxValue(48)
param staleAfterHours int = 0

@description('BACKUP_VERIFY_SCHEDULE: NCRONTAB expression of the verification timer (at least daily; the host resolves %BACKUP_VERIFY_SCHEDULE% itself, so it must be set).')
param verifySchedule string = '0 30 3 * * *'

@description('BACKUP_DRILL_CERT: the restore drill\'s PFX, a Key Vault secret URL (opt-in; empty: verification checks digests only and records recoveryReady "unknown (digests only)").')
param drillCertificateUri string = ''

@description('BACKUP_DRILL_CLIENT_ID: client id of the separate user-assigned identity the drill reads that secret with (docs/KEYVAULT.md); it must be assigned to the app.')
param drillIdentityClientId string = ''

@description('BACKUP_RETENTION_DAYS: days backups are kept (2-14).')
@minValue(2)
@maxValue(14)
param retentionDays int = 7

@description('BACKUP_COMPRESSION: none (default) or zstd; zstd shrinks text-heavy state at some CPU cost.')
@allowed([
  'none'
  'zstd'
])
param compression string = 'none'

@description('BACKUP_PARALLEL_COMPONENTS: how many components are backed up at once (1-8).')
@minValue(1)
@maxValue(8)
param parallelComponents int = 2

@description('BACKUP_STAMP_VERSION: version of the infrastructure being backed up.')
param stampVersion string

@description('Further app settings, e.g. the connection settings named by blob sources; they may not replace the settings above.')
param extraAppSettings object = {}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var certificateMode = empty(legacyEncryptionKeySecretUri)

// Every setting of the brief. The PFX is for recovery only and never lives in the cloud
// app, so BACKUP_DECRYPTION_CERT and its password stay empty. AzureWebJobsStorage is the
// identity-based form (shared keys are off on the account): the Functions host reads
// AzureWebJobsStorage__accountName/__credential/__clientId, and so must the app's own
// queue and table clients.
var appSettings = {
  BACKUP_SHARE_PATH: sharePath
  BACKUP_SHARE_PORT: string(sharePort)
  BACKUP_SHARE_REQUIRE_ENCRYPTION: shareRequireEncryption ? 'true' : 'false'
  BACKUP_SHARE_TIMEOUT_SECONDS: string(shareTimeoutSeconds)
  BACKUP_SHARE_USERNAME: shareUsername
  BACKUP_SHARE_PASSWORD: '@Microsoft.KeyVault(SecretUri=${sharePasswordSecretUri})'
  BACKUP_EXTERNAL_DOMAIN: externalDomain
  BACKUP_REGION: stampRegion
  BACKUP_SCALE_UNIT: scaleUnit
  BACKUP_ENCRYPTION_CERT: certificateMode ? '${keyVaultUri}certificates/${encryptionCertificateName}' : ''
  BACKUP_ENCRYPTION_KEY: legacyEncryptionKeySecretUri
  BACKUP_DECRYPTION_CERT: ''
  BACKUP_DECRYPTION_CERT_PASSWORD: ''
  BACKUP_SOURCES: string(backupSources)
  BACKUP_STAMPS: empty(stamps) ? '' : string(stamps)
  BACKUP_SCHEDULE: backupSchedule
  BACKUP_SCHEDULER_ENABLED: schedulerEnabled ? 'true' : 'false'
  BACKUP_STALE_AFTER_HOURS: (staleAfterHours > 0) ? string(staleAfterHours) : ''
  BACKUP_VERIFY_SCHEDULE: verifySchedule
  BACKUP_DRILL_CERT: drillCertificateUri
  BACKUP_DRILL_CLIENT_ID: drillIdentityClientId
  BACKUP_RETENTION_DAYS: string(retentionDays)
  BACKUP_COMPRESSION: compression
  BACKUP_PARALLEL_COMPONENTS: string(parallelComponents)
  BACKUP_STAMP_VERSION: stampVersion
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AZURE_CLIENT_ID: identityClientId
}

// The app-settings list of the site: the brief's settings win over extraAppSettings.
var appSettingsList = [for setting in items(union(extraAppSettings, appSettings)): {
  name: setting.key
  value: setting.value
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy is not offered for Flex Consumption in every region; a backup interrupted by a zone outage fails, is recorded with its alert and runs again at the next schedule or on demand.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Operators call the HTTP API (function keys) from outside Azure; restrict it with access restrictions or a private endpoint where the deployment has a VNet.
  // checkov:skip=CKV_AZURE_17:The HTTP API authenticates callers with function keys; requiring client certificates would need a PKI for operators that the product does not define.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero per execution; a backup lost with its instance is retried through the queue, so an always-on second instance buys nothing.
  // checkov:skip=CKV_AZURE_213:Instances start on demand for queue and timer triggers; there is no long-lived web front end for a health-check probe to rotate out.
  name: name
  location: location
  // azd deploys the service "api" of azure.yaml to the resource with this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      appSettings: appSettingsList
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

@description('Name of the function app.')
output name string = site.name

@description('Resource id of the function app.')
output id string = site.id

@description('Host name of the function app; the HTTP API is at https://<host>/api/.')
output defaultHostName string = site.properties.defaultHostName
