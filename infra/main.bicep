// infrabackup: the Infrastructure Backup Service as an Azure Functions app, with everything
// it needs. Deployed at subscription scope (it creates its resource group):
//
//   az deployment sub create --location <region> --template-file infra/main.bicep \
//     --parameters @infra/main.parameters.json sharePassword=<password>
//
// Modules (infra/app/):
//   identity.bicep      user-assigned managed identity the app runs as
//   monitoring.bicep    Log Analytics workspace + workspace-based Application Insights
//   storage.bicep       the app's storage account (queues, tables, deployment container), no shared keys
//   keyvault.bicep      Key Vault in RBAC mode with the share password secret
//   roles.bicep         the identity's five data roles, least privilege (and optional operator roles)
//   function-app.bicep  Flex Consumption plan + function app + every app setting of the brief
//   alerts.bicep        action group + six scheduled-query alert rules (one per seed alert,
//                       and "No successful backup")
//   workbook.bicep      Azure Monitor workbook: backups over time
// docs/DEPLOY.md explains the steps, parameters, outputs, roles and the alert queries.

targetScope = 'subscription'

@description('Name of the environment (e.g. infrabackup-prod); part of the resource group name and of every resource name\'s token.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Azure region of all resources. Must offer the Flex Consumption plan.')
@minLength(1)
param location string

@description('Name of the resource group to create or reuse; empty for rg-<environmentName>.')
param resourceGroupName string = ''

@description('BACKUP_SHARE_PATH: UNC path of the share root, with an FQDN (or an IP address), e.g. \\\\fileserver01.contoso.com\\AzSBackups.')
param sharePath string

@description('BACKUP_SHARE_PORT: SMB port of the share.')
@minValue(1)
@maxValue(65535)
param sharePort int = 445

@description('BACKUP_SHARE_REQUIRE_ENCRYPTION: refuse a share that does not offer SMB 3 encryption. On by default here because traffic from Azure crosses networks.')
param shareRequireEncryption bool = true

@description('BACKUP_SHARE_TIMEOUT_SECONDS: a share operation that makes no progress for this long is a connectivity fault.')
@minValue(1)
@maxValue(3600)
param shareTimeoutSeconds int = 60

@description('BACKUP_SHARE_USERNAME: account that writes to the share, e.g. CONTOSO\\svc-azsbackup.')
param shareUsername string

@description('Password of the share account. Stored as a Key Vault secret; BACKUP_SHARE_PASSWORD is a Key Vault reference to it.')
@secure()
param sharePassword string

@description('BACKUP_EXTERNAL_DOMAIN: external domain FQDN of the stamp, e.g. contoso.com.')
param externalDomain string

@description('BACKUP_REGION: region name of the stamp, e.g. nyc (folder naming; not an Azure location).')
param stampRegion string

@description('BACKUP_SCALE_UNIT: scale-unit id when several instances share a region; empty for none.')
param scaleUnit string = ''

@description('BACKUP_STAMP_VERSION: version of the infrastructure being backed up, e.g. 1.2408.1.50.')
param stampVersion string

@description('BACKUP_SOURCES: the sources to back up, as the JSON array of the product brief.')
param backupSources array

@description('BACKUP_STAMPS: the fleet, further stamps this one app backs up beside the stamp above (default), as the JSON array of docs/FLEET.md: {id, externalDomain, region, scaleUnit?, stampVersion?, settings?, secretSettings?}; secrets only by the name of the app setting holding them (put those in extraAppSettings as Key Vault references). Empty: the one stamp above.')
param stamps array = []

@description('BACKUP_SCHEDULE: NCRONTAB expression of the backup timer (every 12 hours by default; 4 to 12 hours is the recommendation).')
param backupSchedule string = '0 0 */12 * * *'

@description('BACKUP_SCHEDULER_ENABLED: false keeps the schedule but skips scheduled runs.')
param schedulerEnabled bool = true

@description('BACKUP_VERIFY_SCHEDULE: NCRONTAB expression of the verification timer (daily at 03:30 UTC by default, between the default backups; at least daily).')
param verifySchedule string = '0 30 3 * * *'

@description('BACKUP_DRILL_CERT: opt-in restore drill: the Key Vault secret URL of the PFX (e.g. https://<vault>.vault.azure.net/secrets/infrabackup). Empty: no drill, recoveryReady "unknown (digests only)".')
param drillCertificateUri string = ''

@description('BACKUP_DRILL_CLIENT_ID: client id of the separate identity the drill reads the PFX with (Key Vault Secrets User on that one secret; docs/KEYVAULT.md).')
param drillIdentityClientId string = ''

@description('BACKUP_STALE_AFTER_HOURS: hours without a successful backup after which "No successful backup" fires (1-48, at least the schedule\'s longest gap plus one). 0 (the default): the app derives it from backupSchedule, twice its longest gap plus one hour (25 for every 12 hours).')
@minValue(0)
@maxValue(48)
param backupStaleAfterHours int = 0

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

@description('Name under which the encryption certificate is imported into the Key Vault after deployment; BACKUP_ENCRYPTION_CERT is its URL.')
param encryptionCertificateName string = 'infrabackup-encryption'

@description('Legacy mode (1811 and older) only: the base64 symmetric key (infrabackup keygen --legacy-key). Stored as a Key Vault secret; BACKUP_ENCRYPTION_KEY becomes its URL and BACKUP_ENCRYPTION_CERT empty. Empty (the default): certificate mode.')
@secure()
param legacyEncryptionKey string = ''

@description('Further app settings, e.g. connection settings named by blob sources. They cannot replace the settings above.')
param extraAppSettings object = {}

@description('E-mail addresses notified when a backup alert fires.')
param alertEmailReceivers array = []

@description('Webhook URLs called (common alert schema) when a backup alert fires. A URL with a token in it is visible in the deployment history.')
param alertWebhookReceivers array = []

@description('Severity of the six alert rules (0 critical ... 4 verbose).')
@minValue(0)
@maxValue(4)
param alertSeverity int = 1

@description('Python version of the function app: 3.11 and 3.12 run azure-functions 1.x, 3.13 runs azure-functions 2.x under the azure-functions-runtime worker (requirements.txt selects by version).')
@allowed([
  '3.11'
  '3.12'
  '3.13'
])
param pythonVersion string = '3.11'

@description('Most instances the function app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Resource id of a subnet (delegated to Microsoft.App/environments) for VNet integration, when the share is reachable only privately; empty for none.')
param virtualNetworkSubnetId string = ''

@description('Object id of the operator (user or group) who imports the certificate; gets Key Vault Certificates Officer and Secrets Officer. Empty for none.')
param operatorPrincipalId string = ''

@description('Principal type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

// One token per subscription, environment and region, so names are unique and stable.
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'infrabackup'
}
var deploymentContainerName = 'app-package'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-infrabackup-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-infrabackup-${resourceToken}'
    applicationInsightsName: 'appi-infrabackup-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'stib${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-ib-${resourceToken}'
    location: location
    tags: tags
    sharePasswordSecretName: 'backup-share-password'
    sharePassword: sharePassword
    legacyMode: !empty(legacyEncryptionKey)
    legacyEncryptionKey: legacyEncryptionKey
  }
}

module roles 'app/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    keyVaultName: keyVault.outputs.name
    sharePasswordSecretName: keyVault.outputs.sharePasswordSecretName
    legacyEncryptionKeySecretName: keyVault.outputs.legacyEncryptionKeySecretName
    storageAccountName: storage.outputs.name
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  // The roles first: Key Vault references, the identity-based AzureWebJobsStorage and the
  // deployment container are all resolved with the identity when the app starts.
  dependsOn: [
    roles
  ]
  params: {
    name: 'func-infrabackup-${resourceToken}'
    planName: 'plan-infrabackup-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: keyVault.outputs.uri
    sharePasswordSecretUri: keyVault.outputs.sharePasswordSecretUri
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    virtualNetworkSubnetId: virtualNetworkSubnetId
    sharePath: sharePath
    sharePort: sharePort
    shareRequireEncryption: shareRequireEncryption
    shareTimeoutSeconds: shareTimeoutSeconds
    shareUsername: shareUsername
    externalDomain: externalDomain
    stampRegion: stampRegion
    scaleUnit: scaleUnit
    encryptionCertificateName: encryptionCertificateName
    legacyEncryptionKeySecretUri: keyVault.outputs.legacyEncryptionKeySecretUri
    backupSources: backupSources
    stamps: stamps
    backupSchedule: backupSchedule
    schedulerEnabled: schedulerEnabled
    staleAfterHours: backupStaleAfterHours
    verifySchedule: verifySchedule
    drillCertificateUri: drillCertificateUri
    drillIdentityClientId: drillIdentityClientId
    retentionDays: retentionDays
    compression: compression
    parallelComponents: parallelComponents
    stampVersion: stampVersion
    extraAppSettings: extraAppSettings
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'alert-infrabackup-${resourceToken}'
    actionGroupName: 'ag-infrabackup-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    emailReceivers: alertEmailReceivers
    webhookReceivers: alertWebhookReceivers
    severity: alertSeverity
    // The stamp as the app names it in its telemetry (it lower-cases domain and region), so
    // that "No successful backup" watches it even when the app never sends anything.
    expectedStamps: [
      {
        stampId: 'default'
        externalDomain: toLower(externalDomain)
        region: toLower(stampRegion)
        scaleUnit: scaleUnit
      }
    ]
    // Until the app's first heartbeat reports the threshold it derived from the schedule.
    staleAfterHours: (backupStaleAfterHours > 0) ? backupStaleAfterHours : 25
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

@description('Azure region of the deployment.')
output AZURE_LOCATION string = location

@description('Resource group holding every resource.')
output AZURE_RESOURCE_GROUP string = rg.name

@description('Name of the function app (for func azure functionapp publish).')
output FUNCTION_APP_NAME string = functionApp.outputs.name

@description('Base URL of the HTTP API.')
output FUNCTION_APP_API_URL string = 'https://${functionApp.outputs.defaultHostName}/api'

@description('Name of the Key Vault; import the encryption certificate here.')
output KEY_VAULT_NAME string = keyVault.outputs.name

@description('URI of the Key Vault.')
output KEY_VAULT_URI string = keyVault.outputs.uri

@description('Name the encryption certificate must be imported under.')
output ENCRYPTION_CERTIFICATE_NAME string = encryptionCertificateName

@description('Name of the app\'s storage account (queues, tables, deployment container).')
output STORAGE_ACCOUNT_NAME string = storage.outputs.name

@description('Name of the Application Insights component.')
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName

@description('Resource id of the Log Analytics workspace.')
output LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsWorkspaceId

@description('Client id of the app\'s managed identity (AZURE_CLIENT_ID).')
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId

@description('Object id of the app\'s managed identity.')
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId

@description('Resource id of the action group the alert rules notify.')
output ACTION_GROUP_ID string = alerts.outputs.actionGroupId

@description('Names of the six scheduled-query alert rules.')
output ALERT_RULE_NAMES array = alerts.outputs.alertRuleNames

@description('Resource id of the backups workbook.')
output WORKBOOK_ID string = workbook.outputs.id
