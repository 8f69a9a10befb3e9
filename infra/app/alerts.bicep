// Alerts: one action group and six scheduled-query (log search) alert rules: one per seed
// alert of shared/infrabackup/alerts.py, each carrying the seed's name, description and remediation,
// and "No successful backup" (infrabackup.alerts.NO_SUCCESSFUL_BACKUP).
//
// The queries are in queries/ beside this file (tests/test_alert_queries.py runs them with
// the Kusto language service and plays them over recorded event sequences); every query
// starts with the stamp key of queries/stamp-key.kql, the one place that says what a stamp
// is. How the rules fire and resolve (docs/TELEMETRY.md has the long form):
//
// * The five: per stamp, the newest backup result in the look-back window (a backup event,
//   or what the newest heartbeat reports from the job record) is a failure with this rule's
//   alert name. Split by stamp and stateful (autoMitigate): the stamp's alert resolves after
//   the next success (or a failure of another kind) arrives.
// * No successful backup: per expected stamp (the deployment's, and any seen in the
//   window), no InfrastructureBackupSucceeded for longer than its threshold; heartbeats
//   excuse a maintenance window that opened while the stamp was fresh. Silence never
//   resolves it; the next success does.

@description('Prefix of the alert rule names; the rule for alert <key> is <prefix>-<key>.')
param namePrefix string

@description('Name of the action group.')
param actionGroupName string

@description('Short name of the action group (at most 12 characters), shown in SMS and e-mail.')
@maxLength(12)
param actionGroupShortName string = 'infrabackup'

@description('Azure region of the alert rules (the region of the Application Insights component).')
param location string

@description('Tags applied to the alert resources.')
param tags object = {}

@description('Resource id of the Application Insights component the app sends its events to.')
param applicationInsightsId string

@description('E-mail addresses the action group notifies.')
param emailReceivers array = []

@description('Webhook URLs the action group calls with the common alert schema (e.g. an ITSM or chat connector).')
param webhookReceivers array = []

@description('Severity of the alert rules (0 critical ... 4 verbose).')
@minValue(0)
@maxValue(4)
param severity int = 1

@description('How often each rule runs its query (ISO 8601).')
param evaluationFrequency string = 'PT15M'

@description('Look-back window of the query (ISO 8601, at most P2D). Longer than the backup interval, so the latest backup of each stamp is always in view.')
param windowSize string = 'P2D'

@description('The stamps the deployment backs up, as objects {stampId, externalDomain, region, scaleUnit} (lower-case domain and region, as the app sends them). "No successful backup" watches each of them even when nothing at all arrives.')
param expectedStamps array

@description('Hours without a successful backup after which "No successful backup" fires, until a stamp\'s heartbeat reports its own BACKUP_STALE_AFTER_HOURS (1-48).')
@minValue(1)
@maxValue(48)
param staleAfterHours int = 25

// The five seed alerts, worded exactly as shared/infrabackup/alerts.py (tests/test_infra.py checks it).
var seedAlerts = [
  {
    key: 'capacity'
    name: 'Backup failed because the file share is out of capacity'
    description: 'File share is out of capacity and backup controller can\'t export backup files to the location.'
    remediation: 'Add more storage capacity and try back up again. Delete existing backups (starting from oldest first) to free up space.'
  }
  {
    key: 'connectivity'
    name: 'Backup failed due to connectivity problems'
    description: 'Network between Azure Stack Hub and the file share is experiencing issues.'
    remediation: 'Address the network issue and try backup again.'
  }
  {
    key: 'path'
    name: 'Backup failed due to a fault in the path'
    description: 'The file share path can\'t be resolved.'
    remediation: 'Map the share from a different computer to ensure the share is accessible. You may need to update the path if it\'s no longer valid.'
  }
  {
    key: 'authentication'
    name: 'Backup failed due to authentication issue'
    description: 'There might be an issue with the credentials or a network issue that impacts authentication.'
    remediation: 'Map the share from a different computer to ensure the share is accessible. You may need to update credentials if they\'re no longer valid.'
  }
  {
    key: 'general'
    name: 'Backup failed due to a general fault'
    description: 'The failed request could be due to an intermittent issue. Try to back up again.'
    remediation: 'Call support.'
  }
]

// The sixth alert, worded exactly as shared/infrabackup/alerts.py's NO_SUCCESSFUL_BACKUP.
var staleAlert = {
  key: 'stale'
  name: 'No successful backup'
  description: 'No backup of the stamp has succeeded within the time allowed (BACKUP_STALE_AFTER_HOURS): backups keep failing, are skipped, or the backup app is not running, and the newest backup to restore from keeps getting older.'
  remediation: 'Look at the stamp\'s other backup alerts and at the workbook\'s stamp health. Without a recent heartbeat the app is not running: start the function app and check that its timer fires and that its identity can reach storage. With heartbeats, turn the scheduler on (BACKUP_SCHEDULER_ENABLED) or fix the failing backups. Then start a backup (POST /api/backups); the alert closes when one succeeds.'
}

// What a stamp is, for every query: one line defining stampOf(customDimensions).
var stampKey = trim(loadTextContent('queries/stamp-key.kql'))

// __ALERT_NAME__ is replaced by each rule's alert name. The result has no datetime
// column, so the rule counts the rows over the whole window: one row per failing stamp.
var alertQueryBody = loadTextContent('queries/backup-failed.kql')
var alertQuery = '${stampKey}\n${alertQueryBody}'

// One row per stamp without a success for longer than its threshold (no datetime column).
var staleQueryBody = replace(replace(loadTextContent('queries/no-successful-backup.kql'), '__EXPECTED_STAMPS__', string(expectedStamps)), '__STALE_AFTER_HOURS__', string(staleAfterHours))
var staleQuery = '${stampKey}\n${staleQueryBody}'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: actionGroupShortName
    enabled: true
    emailReceivers: [for (address, i) in emailReceivers: {
      name: 'email-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
    webhookReceivers: [for (url, i) in webhookReceivers: {
      name: 'webhook-${i}'
      serviceUri: url
      useCommonAlertSchema: true
    }]
  }
}

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in seedAlerts: {
  name: '${namePrefix}-${alert.key}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: alert.name
    description: '${alert.name}. ${alert.description} Remediation: ${alert.remediation}'
    severity: severity
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: replace(alertQuery, '__ALERT_NAME__', alert.name)
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'stamp'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
      customProperties: {
        alertName: alert.name
        description: alert.description
        remediation: alert.remediation
      }
    }
  }
}]

var seedRuleNames = [for alert in seedAlerts: '${namePrefix}-${alert.key}']

// No successful backup. Stateful like the five, but its query never loses a stamp it
// expects, so it resolves only when a success arrives (see the header).
resource staleRule 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-${staleAlert.key}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: staleAlert.name
    description: '${staleAlert.name}. ${staleAlert.description} Remediation: ${staleAlert.remediation}'
    severity: severity
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: staleQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'stamp'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
      customProperties: {
        alertName: staleAlert.name
        description: staleAlert.description
        remediation: staleAlert.remediation
      }
    }
  }
}

@description('Resource id of the action group.')
output actionGroupId string = actionGroup.id

@description('Names of the six alert rules, in the order capacity, connectivity, path, authentication, general, stale.')
output alertRuleNames array = concat(seedRuleNames, [staleRule.name])
