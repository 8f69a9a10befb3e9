// Log Analytics workspace and the workspace-based Application Insights component that the
// app's azure-monitor-opentelemetry exporter sends its events, metrics and spans to.

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Azure region of the monitoring resources.')
param location string

@description('Tags applied to the monitoring resources.')
param tags object = {}

@description('Days the workspace keeps telemetry. Backup history in the workbook reaches back this far.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 90

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    IngestionMode: 'LogAnalytics'
  }
}

@description('Resource id of the Log Analytics workspace.')
output logAnalyticsWorkspaceId string = logAnalytics.id

@description('Resource id of the Application Insights component (the scope of the alert rules and the workbook).')
output applicationInsightsId string = applicationInsights.id

@description('Name of the Application Insights component.')
output applicationInsightsName string = applicationInsights.name
