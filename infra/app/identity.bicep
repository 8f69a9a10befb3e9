// The one identity the function app runs as. It is user-assigned (not system-assigned) so
// that its role assignments exist before the app starts: Key Vault references and the
// identity-based AzureWebJobsStorage connection resolve on the first start.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region of the identity.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

@description('Resource id of the identity (for identity blocks and keyVaultReferenceIdentity).')
output id string = identity.id

@description('Client id of the identity: the value of AZURE_CLIENT_ID and AzureWebJobsStorage__clientId.')
output clientId string = identity.properties.clientId

@description('Object (principal) id of the identity, for role assignments.')
output principalId string = identity.properties.principalId

@description('Name of the identity.')
output name string = identity.name
