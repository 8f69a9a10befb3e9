// Azure Monitor workbook "Infrastructure backups": backups over time (result, duration,
// size, throughput, share free capacity) from the app's custom events and metrics. The
// workbook content is backup-workbook.json beside this file; __APPINSIGHTS_ID__ in it is
// replaced by the Application Insights component the queries run against, and
// __STAMP_KEY__ by the stamp key of queries/stamp-key.kql (the alert rules' own: one line
// without double quotes, so it can stand inside the JSON strings as it is).

@description('Display name of the workbook.')
param displayName string = 'Infrastructure backups'

@description('Azure region of the workbook.')
param location string

@description('Tags applied to the workbook.')
param tags object = {}

@description('Resource id of the Application Insights component whose telemetry the workbook shows.')
param applicationInsightsId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'infrabackup-backups-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: replace(replace(loadTextContent('backup-workbook.json'), '__APPINSIGHTS_ID__', applicationInsightsId), '__STAMP_KEY__', trim(loadTextContent('queries/stamp-key.kql')))
  }
}

@description('Resource id of the workbook.')
output id string = workbook.id
