// Alerts: one action group and five scheduled-query (log search) alert rules, one per seed
// alert of shared/alerts.py, each carrying the seed's name, description and remediation.
//
// How a rule fires and resolves (docs/DEPLOY.md has the long form). The app sends, per
// backup, either a custom event "InfrastructureBackupAlert" (customDimensions: alertName,
// description, remediation, severity, backupId, externalDomain, region, scaleUnit,
// sharePath, faultCode) or "InfrastructureBackupSucceeded". Each rule takes, per stamp
// (externalDomain/region[/scaleUnit]), the latest of those events in the look-back window
// and returns the stamp when that event is a failure with this rule's alert name. The rule
// is split by stamp and stateful (autoMitigate), so the alert of a stamp resolves at the
// first evaluation after a later success (or a failure of another kind) arrives.

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

// The five seed alerts, worded exactly as shared/alerts.py (tests/test_infra.py checks it).
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

// __ALERT_NAME__ is replaced by each rule's alert name. The result has no datetime
// column, so the rule counts the rows over the whole window: one row per failing stamp.
var alertQuery = '''
let alertEvent = "InfrastructureBackupAlert";
let successEvent = "InfrastructureBackupSucceeded";
customEvents
| where name in (alertEvent, successEvent)
| extend externalDomain = tostring(customDimensions.externalDomain), region = tostring(customDimensions.region), scaleUnit = tostring(customDimensions.scaleUnit)
| extend stamp = strcat(externalDomain, "/", region, iff(isempty(scaleUnit), "", strcat("/", scaleUnit)))
| summarize arg_max(timestamp, name, customDimensions) by stamp
| where name == alertEvent and tostring(customDimensions.alertName) == "__ALERT_NAME__"
| project stamp, lastEventTime = tostring(timestamp), backupId = tostring(customDimensions.backupId), sharePath = tostring(customDimensions.sharePath), faultCode = tostring(customDimensions.faultCode), eventSeverity = tostring(customDimensions.severity)
'''

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

@description('Resource id of the action group.')
output actionGroupId string = actionGroup.id

@description('Names of the five alert rules, in the order capacity, connectivity, path, authentication, general.')
output alertRuleNames array = [for (alert, i) in seedAlerts: alertRules[i].name]
